"""What a browser would submit from a server-rendered form, read with the standard library's HTML parser
(no JavaScript runs: fields that a script would disable are still sent)."""

from __future__ import annotations

from html.parser import HTMLParser


class _FormReader(HTMLParser):
    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.fields: dict[str, str] = {}
        self.disabled: set[str] = set()
        self._select: str | None = None
        self._select_first: str | None = None
        self._option: dict[str, str | None] | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and a.get("id") == self.form_id:
            self.inside = True
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name:
            if "disabled" in a:
                self.disabled.add(name)
                return
            kind = (a.get("type") or "text").lower()
            if kind in ("checkbox", "radio"):  # sent only when checked (one radio of a group)
                if "checked" in a:
                    self.fields[name] = a.get("value") or "on"
            elif kind != "file":
                self.fields[name] = a.get("value") or ""
        elif tag == "select" and name:
            self._select, self._select_first = name, None
        elif tag == "option" and self._select:
            self._option = {"value": a.get("value"), "selected": "selected" if "selected" in a else None}
            self._text = []
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None or self._option is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.inside:
            self.inside = False
        elif tag == "option" and self._option is not None and self._select:
            value = self._option["value"]
            value = "".join(self._text).strip() if value is None else value
            if self._select_first is None:
                self._select_first = value
            if self._option["selected"]:
                self.fields[self._select] = value
            self._option = None
        elif tag == "select" and self._select:
            self.fields.setdefault(self._select, self._select_first or "")
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            text = "".join(self._text)
            self.fields[self._textarea] = text[1:] if text.startswith("\n") else text
            self._textarea = None


def form_fields(html: str, form_id: str) -> dict[str, str]:
    """The fields of ``<form id=form_id>`` as a browser without JavaScript would send them."""
    reader = _FormReader(form_id)
    reader.feed(html)
    return reader.fields
