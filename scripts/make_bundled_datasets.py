"""Write the two datasets that ship with the platform (backend/evaluations/bundled/), deterministically.

    .venv/bin/python scripts/make_bundled_datasets.py

- ``arithmetic_val.csv``: 40 multiple-choice sums and differences (four choices, the right one at
  A, B, C, D ten times each), ``arithmetic_dev.csv`` five more for few-shot prompts;
- ``facts.jsonl``: 30 short factual questions with one-word or one-number answers.
Running it again writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "backend" / "evaluations" / "bundled"
LETTERS = "ABCD"

FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet is the largest in the Solar System?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("How many continents are there?", "7"),
    ("How many days are there in a leap year?", "366"),
    ("How many sides does a hexagon have?", "6"),
    ("How many minutes are there in an hour?", "60"),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("Which gas do plants absorb from the air for photosynthesis?", "Carbon dioxide"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("Which language has the most native speakers?", "Mandarin Chinese"),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the hardest natural substance?", "Diamond"),
    ("What is the square root of 81?", "9"),
    ("How many bits are there in a byte?", "8"),
    ("What is the smallest prime number?", "2"),
    ("In which year did the first person walk on the Moon?", "1969"),
    ("What is the currency of the United Kingdom?", "Pound sterling"),
]


def arithmetic(rng: random.Random, count: int, first_id: int, prefix: str, seen: set[str]) -> list[dict[str, str]]:
    """``count`` items whose questions are not in ``seen`` (which they are added to)."""
    rows = []
    for number in range(count):
        question = ""
        while not question or question in seen:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if number % 2 == 0:
                question, right = f"What is {a} + {b}?", a + b
            else:
                a, b = max(a, b), min(a, b)
                question, right = f"What is {a} - {b}?", a - b
        seen.add(question)
        wrong: set[int] = set()
        while len(wrong) < 3:
            candidate = right + rng.choice([-1, 1]) * rng.randint(1, 12)
            if candidate != right and candidate >= 0:
                wrong.add(candidate)
        position = number % 4  # the right answer at A, B, C, D in turn
        values = sorted(wrong)
        values.insert(position, right)
        row = {"id": f"{prefix}-{first_id + number:02d}", "question": question}
        row.update({letter: str(value) for letter, value in zip(LETTERS, values, strict=True)})
        row["answer"] = LETTERS[position]
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "question", *LETTERS, "answer"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261202)
    seen: set[str] = set()
    write_csv(OUT / "arithmetic_val.csv", arithmetic(rng, 40, 1, "arith", seen))
    write_csv(OUT / "arithmetic_dev.csv", arithmetic(rng, 5, 1, "arith-dev", seen))
    lines = [json.dumps({"id": f"fact-{n:02d}", "query": q, "response": a}, ensure_ascii=False, sort_keys=True)
             for n, (q, a) in enumerate(FACTS, 1)]
    (OUT / "facts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
