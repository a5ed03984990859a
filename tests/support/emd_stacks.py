"""CloudFormation stacks shaped like AWS Easy Model Deployer's, for tests on moto."""

from __future__ import annotations

import json

from backend.catalog.emd import emd_stack_name

REGION = "us-east-1"
ALB_DNS = "emd-alb-123.us-east-1.elb.amazonaws.com"

# Shaped like EMD's src/emd/cfn/{ecs,sagemaker_realtime}/template.yaml: the same Parameter and Output
# names, with one SSM parameter in place of the real resources.
_EMD_PARAMETERS = {
    "ModelId": {"Type": "String"},
    "ModelTag": {"Type": "String", "Default": "dev"},
    "InstanceType": {"Type": "String", "Default": "g5.xlarge"},
    "EngineType": {"Type": "String", "Default": "vllm"},
    "ServiceType": {"Type": "String", "Default": "ecs"},
    "FrameWorkType": {"Type": "String", "Default": "fastapi"},
    "Region": {"Type": "String", "Default": REGION},
}
_MODEL_OUTPUT = {"Value": {"Fn::Join": ["", [{"Ref": "ModelId"}, "/", {"Ref": "ModelTag"}]]}}
_MARKER = {
    "Type": "AWS::SSM::Parameter",
    "Properties": {
        "Name": {"Fn::Join": ["", ["/emd-test/", {"Ref": "AWS::StackName"}]]},
        "Type": "String",
        "Value": "marker",
    },
}

ECS_TEMPLATE = json.dumps(
    {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {**_EMD_PARAMETERS, "DNSName": {"Type": "String"}},
        "Resources": {"Marker": _MARKER},
        "Outputs": {
            "Model": _MODEL_OUTPUT,
            "BaseURL": {"Value": {"Fn::Join": ["", ["http://", {"Ref": "DNSName"}]]}},
            "ECSServiceConnect": {"Value": {"Fn::Sub": "http://${ModelId}:8080"}},
        },
    }
)
SAGEMAKER_TEMPLATE = json.dumps(
    {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": _EMD_PARAMETERS,
        "Resources": {"Marker": _MARKER},
        "Outputs": {
            "Model": _MODEL_OUTPUT,
            "SageMakerEndpointName": {"Value": {"Fn::Sub": "${AWS::StackName}-endpoint"}},
        },
    }
)
UNRELATED_TEMPLATE = json.dumps(
    {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Marker": _MARKER},
        "Outputs": {"BaseURL": {"Value": "http://not-emd.example"}},
    }
)


def _params(**values: str) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def create_emd_stack(cfn, template: str, model_id: str, tag: str, **params: str) -> str:
    name = emd_stack_name(model_id, tag)
    cfn.create_stack(
        StackName=name,
        TemplateBody=template,
        Parameters=_params(ModelId=model_id, ModelTag=tag, **params),
    )
    return name
