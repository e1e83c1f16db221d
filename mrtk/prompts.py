"""Prompt templates: files with YAML front matter and a body, rendered strictly, hashed.

A template file looks like

    ---
    name: judge_additive5
    role: judge              # actor | judge | meta-judge | eval
    version: 1
    variables: [question, response]
    parser: score            # score | verdict | none
    score_range: [0, 5]
    sampling: {temperature: 0.8}   # optional defaults; config keys set explicitly win
    ---
    Review the user's question ... {{question}} ... {{response}}

Rendering substitutes `{{name}}` in ONE pass: text that a model wrote (which may itself
contain `{{...}}`, `Score: 5` or `Winner: Judgement A`) is inserted verbatim and never
rendered again. A missing or unknown variable is an error naming it. The content hash of
the file is stored on every row a template produced.

A judge template is pointwise (`parser: score`, variables `question`, `response`) or
pairwise (`parser: verdict`, variables `question`, `response_a`, `response_b`); the loop's
judge stage needs a pointwise one, `mrtk judge` takes either. A meta-judge template may set
`show_scores: false` (the NeMo variant: the judgements are shown without their score lines).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from mrtk.errors import MrtkError
from mrtk.resources import asset_dir

_PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")
ROLES = ("actor", "judge", "meta-judge", "eval")
PARSERS = ("score", "verdict", "arena", "none")
# What each stage hands to its template; a template may use a subset, never more.
ROLE_VARIABLES = {
    "actor": {"prompt"},
    "judge": {"question", "response"},
    "pairwise-judge": {"question", "response_a", "response_b"},
    "meta-judge": {
        "question",
        "response",
        "judgement_a",
        "judgement_b",
        "rubric",
    },  # rubric: the judge template's, verbatim
    "eval": {"question", "output_a", "output_b", "response", "reference"},
}
# What a template of each stage must show the model (else it judges nothing).
ROLE_REQUIRED = {
    "actor": {"prompt"},
    "judge": {"response"},
    "pairwise-judge": {"response_a", "response_b"},
    "meta-judge": {"judgement_a", "judgement_b"},
}
ROLE_PARSER = {"actor": "none", "judge": "score", "pairwise-judge": "verdict", "meta-judge": "verdict"}
_FRONT_KEYS = {
    "name",
    "role",
    "version",
    "description",
    "variables",
    "parser",
    "score_range",
    "sampling",
    "show_scores",
    "rubric",
}
SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens")


@dataclass(frozen=True)
class Template:
    name: str
    role: str
    body: str
    variables: tuple[str, ...]
    parser: str
    hash: str
    path: str
    version: int = 1
    score_range: tuple[float, float] = (0.0, 5.0)
    sampling: dict = field(default_factory=dict)
    description: str = ""
    show_scores: bool = True
    rubric: str | None = None  # a judge's criteria (front matter `rubric:`), shown verbatim to the meta-judge

    @property
    def stage(self) -> str:
        """The stage this template fits: its role, with judges split into pointwise and pairwise."""
        return "pairwise-judge" if self.role == "judge" and self.parser == "verdict" else self.role

    def render(self, **values: str) -> str:
        missing = [v for v in self.variables if v not in values]
        unknown = [v for v in values if v not in self.variables]
        if missing:
            raise MrtkError(
                f"template {self.name}: missing variable {missing[0]!r}; pass it or remove {{{{{missing[0]}}}}} from {self.path}"
            )
        if unknown:
            raise MrtkError(
                f"template {self.name}: unknown variable {unknown[0]!r}; declare it in the front matter of {self.path}"
            )
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.body)

    def bind(self, **values: str) -> "Template":
        """This template with some variables filled in for good (a meta-judge bound to its judge's
        rubric); the hash covers the filled text, so rows keyed by it change when it changes."""
        body = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), self.body)
        blob = self.hash + "".join(f"\0{k}={values[k]}" for k in sorted(values))
        return replace(
            self,
            body=body,
            variables=tuple(v for v in self.variables if v not in values),
            hash=hashlib.sha256(blob.encode()).hexdigest()[:12],
        )


def template_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """User directories first (they shadow shipped templates), then the shipped `prompts/`."""
    return [Path(d) for d in (extra or [])] + [asset_dir("prompts")]


def find_template(name: str, extra_dirs: list[str | Path] | None = None) -> Path:
    as_path = Path(name)
    if as_path.suffix == ".md" and as_path.is_file():
        return as_path
    for d in template_dirs(extra_dirs):
        candidate = d / f"{name}.md"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in template_dirs(extra_dirs) if d.is_dir() for p in d.glob("*.md")})
    raise MrtkError(f"template {name!r} not found; use one of: {', '.join(known)} (or a path to a .md file)")


def load_template(name: str, extra_dirs: list[str | Path] | None = None, role: str | None = None) -> Template:
    """Load and validate a template; `role` also checks it fits that stage."""
    path = find_template(name, extra_dirs)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MrtkError(f"template {path}: not UTF-8 text; re-save it as UTF-8") from None
    template = parse_template(text, str(path))
    if role is not None:
        check_role(template, role)
    return template


def parse_template(text: str, path: str = "<string>") -> Template:
    parts = re.split(r"^---[ \t]*$", text, maxsplit=2, flags=re.MULTILINE)
    if len(parts) != 3 or parts[0].strip():
        raise MrtkError(f"template {path}: no front matter; start the file with a '---' block of YAML closed by '---'")
    try:
        meta = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as e:
        raise MrtkError(
            f"template {path}: front matter is not valid YAML ({_one_line(e)}); fix the '---' block"
        ) from None
    if not isinstance(meta, dict):
        raise MrtkError(f"template {path}: front matter must be a YAML mapping of keys to values")
    unknown = sorted(set(meta) - _FRONT_KEYS)
    if unknown:
        raise MrtkError(
            f"template {path}: unknown front-matter key {unknown[0]!r}; allowed: {', '.join(sorted(_FRONT_KEYS))}"
        )
    for key in ("name", "role", "variables", "parser"):
        if key not in meta:
            raise MrtkError(f"template {path}: front matter lacks {key!r}; add it (see prompts/judge_additive5.md)")
    if meta["role"] not in ROLES:
        raise MrtkError(f"template {path}: role {meta['role']!r} is not one of {', '.join(ROLES)}")
    if meta["parser"] not in PARSERS:
        raise MrtkError(f"template {path}: parser {meta['parser']!r} is not one of {', '.join(PARSERS)}")
    variables = meta["variables"]
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise MrtkError(f"template {path}: 'variables' must be a list of names, e.g. [question, response]")
    body = parts[2].strip("\n") + "\n"
    used = set(_PLACEHOLDER.findall(body))
    undeclared = sorted(used - set(variables))
    if undeclared:
        raise MrtkError(
            f"template {path}: unknown variable {{{{{undeclared[0]}}}}} in the body; declare it under 'variables' or remove it"
        )
    unused = sorted(set(variables) - used)
    if unused:
        raise MrtkError(
            f"template {path}: variable {unused[0]!r} is declared but never used as {{{{{unused[0]}}}}}; remove it or use it"
        )
    score_range = _score_range(meta.get("score_range", [0, 5]), path)
    sampling = meta.get("sampling") or {}
    if not isinstance(sampling, dict) or set(sampling) - set(SAMPLING_KEYS):
        raise MrtkError(
            f"template {path}: 'sampling' must map some of {', '.join(SAMPLING_KEYS)} to values, e.g. {{temperature: 0.7}}"
        )
    if not isinstance(meta.get("show_scores", True), bool):
        raise MrtkError(f"template {path}: 'show_scores' must be true or false")
    rubric = meta.get("rubric")
    if rubric is not None and not (isinstance(rubric, str) and rubric.strip()):
        raise MrtkError(f"template {path}: 'rubric' must be the criteria text (a YAML block: rubric: |)")
    template = Template(
        name=str(meta["name"]),
        role=meta["role"],
        body=body,
        variables=tuple(variables),
        parser=meta["parser"],
        hash=hashlib.sha256(text.encode()).hexdigest()[:12],
        path=path,
        version=int(meta.get("version", 1)),
        score_range=score_range,
        sampling=dict(sampling),
        description=str(meta.get("description", "")),
        show_scores=meta.get("show_scores", True),
        rubric=rubric.strip("\n") if rubric else None,
    )
    if template.role == "judge" and "rubric" in template.variables:  # a judge shows its own rubric
        if not template.rubric:
            raise MrtkError(
                f"template {path}: the body uses {{{{rubric}}}} but the front matter has no 'rubric:'; add the criteria there"
            )
        return replace(template.bind(rubric=template.rubric), hash=template.hash)
    return template


def bind_meta_judge(meta: Template, judge: Template) -> Template:
    """The meta-judge sees "the rubric used by the judge" (the paper): its `{{rubric}}` is the judge
    template's `rubric:`, verbatim, so swapping the judge's rubric swaps the meta-judge's too."""
    if "rubric" not in meta.variables:
        return meta
    if not judge.rubric:
        raise MrtkError(
            f"meta-judge template {meta.name} shows the judge's rubric, but judge template {judge.name} has no 'rubric:' "
            f"in its front matter; add the criteria there (see prompts/judge_additive5.md) or use a meta-judge without {{{{rubric}}}}"
        )
    return meta.bind(rubric=judge.rubric)


def _score_range(value, path: str) -> tuple[float, float]:
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(x, (int, float)) for x in value)
    if not ok or not value[0] < value[1]:
        raise MrtkError(f"template {path}: 'score_range' must be [low, high] with low < high, e.g. [0, 5]")
    return float(value[0]), float(value[1])


def check_role(template: Template, role: str) -> None:
    """`role` is a stage: actor, judge (pointwise), pairwise-judge, meta-judge or eval."""
    if template.stage != role:
        if role == "judge" and template.stage == "pairwise-judge":
            raise MrtkError(
                f"template {template.name} is a pairwise judge; the loop's judge stage needs a pointwise one "
                "(parser: score); use pairwise templates with `mrtk judge`"
            )
        raise MrtkError(
            f"template {template.name} has role {template.role!r} but the {role} stage needs a {role!r} template"
        )
    extra = sorted(set(template.variables) - ROLE_VARIABLES[role])
    if extra:
        raise MrtkError(
            f"template {template.name}: unknown variable {extra[0]!r} for the {role} stage, which provides only "
            f"{', '.join(sorted(ROLE_VARIABLES[role]))}; remove {{{{{extra[0]}}}}} from {template.path}"
        )
    lacking = sorted(ROLE_REQUIRED.get(role, set()) - set(template.variables))
    if lacking:
        raise MrtkError(
            f"template {template.name}: the {role} stage needs {{{{{lacking[0]}}}}} in the body; add it to the body and to 'variables'"
        )
    if role in ROLE_PARSER and template.parser != ROLE_PARSER[role]:
        raise MrtkError(
            f"template {template.name}: the {role} stage needs parser {ROLE_PARSER[role]!r}, not {template.parser!r}"
        )


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def judge_prompt(template: Template, question: str, response: str) -> str:
    """A pointwise judge template rendered for one response (the loop's judge, DPO's judge
    examples, the external audit)."""
    return template.render(question=question, response=response)


def discover(extra_dirs: list | None = None) -> list[tuple[str, "Template | MrtkError", str]]:
    """Every template the search path holds, first found wins: (name, the template or the error
    that makes it invalid, "shipped" or its folder)."""
    shipped, seen, found = asset_dir("prompts"), set(), []
    for d in template_dirs(extra_dirs):
        for path in sorted(d.glob("*.md")) if d.is_dir() else []:
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                t: Template | MrtkError = load_template(str(path))
            except MrtkError as e:
                t = e
            found.append((path.stem, t, "shipped" if d == shipped else str(d)))
    return found
