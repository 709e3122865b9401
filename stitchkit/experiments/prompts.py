"""Prompt sources: a list in the YAML, a text file, or a caption file sampled with a fixed seed.

    prompts: [a red circle, ...]                       # a list; index = position in the list
    prompts_file: prompts.txt                          # a prompt a line (blank lines skipped)
    prompts: {from: captions_val2014.json, sample: 5000, seed: 0}   # the paper's 5,000 COCO captions
    prompts: {from: captions.csv, field: text}          # every row's `text`

Formats, by extension: ``.txt`` (a prompt a line), ``.csv`` / ``.tsv`` (column ``prompt`` or ``caption``, or
``field``), ``.jsonl`` (key ``prompt`` or ``caption``, or ``field``) and ``.json`` in the COCO captions format
(``annotations[].caption``, or ``field``). Every prompt keeps its **index in the source** (line among the
non-blank lines, data row, or position in ``annotations``), and that index names the unit
(``p0042-s0``): two experiments sampling from one file share the units they have in common.

``sample: N`` picks the N indices whose keys ``blake2b(f"{seed}:{index}")`` are smallest, then keeps them in
source order. That selection depends on nothing but the seed and the index — not on numpy's or Python's
random streams, which may change between versions — so it is the same on every machine and every run,
and a larger sample with the same seed contains a smaller one. It costs one short hash per caption.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.fields import list_of, mapping, only, positive, typed

FORMATS = (".txt", ".csv", ".tsv", ".jsonl", ".json")
#: Column or key names tried, in order, when ``field`` is not given.
DEFAULT_FIELDS = ("prompt", "caption")


@attrs.frozen(kw_only=True)
class PromptSet:
    """The experiment's prompts and each one's index in its source (which names the unit)."""

    prompts: tuple[str, ...]
    indices: tuple[int, ...]
    #: The source spec with an absolute path (``None`` for an inline list): written to config.resolved.yaml.
    source: Mapping[str, Any] | None = None


def sample_indices(count: int, sample: int, seed: int) -> list[int]:
    """``sample`` of ``range(count)`` without replacement, the same everywhere for one seed, sorted."""
    def key(index: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()

    return sorted(heapq.nsmallest(sample, range(count), key=key))


def _text(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        prompts = (line.strip() for line in f)
        yield from enumerate(p for p in prompts if p)


def _pick(row: Mapping[str, Any], field: str | None, where: str, available) -> str | None:
    names = (field,) if field else DEFAULT_FIELDS
    for name in names:
        if name in row:
            return row[name]
    wanted = repr(field) if field else "'prompt' or 'caption'"
    raise ConfigError("prompts.field", f"{where} has no {wanted}",
                      "has: " + ", ".join(map(str, available)) + "; name one with prompts.field")


def _table(path: Path, field: str | None) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        header = reader.fieldnames or []
        _pick({h: None for h in header}, field, f"the header of {path.name}", header)
        for i, row in enumerate(reader):
            yield i, _pick(row, field, f"row {i}", header)


def _jsonl(path: Path, field: str | None) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        i = 0
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError("prompts.from", f"{path.name} line {n} is not JSON", "one JSON object a line") from None
            if not isinstance(row, Mapping):
                raise ConfigError("prompts.from", f"{path.name} line {n} is not a JSON object", "one object a line")
            yield i, _pick(row, field, f"line {n}", list(row))
            i += 1


def _coco(path: Path, field: str | None) -> Iterator[tuple[int, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError("prompts.from", f"{path.name} is not valid JSON ({err.msg} at line {err.lineno})") from None
    annotations = data.get("annotations") if isinstance(data, Mapping) else None
    if not isinstance(annotations, list):
        raise ConfigError("prompts.from", f"{path.name} has no `annotations` list",
                          "a COCO captions file ({annotations: [{caption: ...}, ...]}), or use .jsonl")
    del data  # keep only the annotations (images, licences, ... are dropped)
    for i, row in enumerate(annotations):
        if not isinstance(row, Mapping):
            raise ConfigError("prompts.from", f"annotations[{i}] is not an object")
        yield i, _pick(row, field or "caption", f"annotations[{i}]", list(row))


def read_source(spec: Any, base: Path) -> PromptSet:
    """Read ``{from: PATH, sample: N, seed: S, field: NAME}`` (``PATH`` relative to ``base``)."""
    spec = mapping(spec, "prompts", "a list, or {from: PATH, sample: N, seed: S, field: NAME}")
    only(spec, "prompts", ("from", "sample", "seed", "field"))
    if "from" not in spec:
        raise ConfigError("prompts.from", "missing", "the path of a .txt, .csv, .tsv, .jsonl or COCO .json file")
    path = Path(typed(spec["from"], "prompts.from", str)).expanduser()
    path = path if path.is_absolute() else base / path
    field = typed(spec["field"], "prompts.field", str) if spec.get("field") is not None else None
    sample = positive(spec["sample"], "prompts.sample", int) if spec.get("sample") is not None else None
    seed = typed(spec.get("seed", 0), "prompts.seed", int)
    if path.suffix not in FORMATS:
        raise ConfigError("prompts.from", f"unknown format {path.suffix or '(none)'!r} of {path.name}",
                          "one of " + ", ".join(FORMATS))
    if not path.is_file():
        raise ConfigError("prompts.from", f"no such file: {path}", "give a path relative to the YAML, or absolute")
    if path.stat().st_size == 0:  # a zero-byte csv used to be "no 'prompt' column", the wrong fix
        raise ConfigError("prompts.from", f"{path.name} is empty (0 bytes)", "give a file with at least one prompt")
    if path.suffix == ".txt":
        if field is not None:
            raise ConfigError("prompts.field", "given for a .txt file", "a .txt file has one prompt a line, no fields")
        rows = _text(path)
    elif path.suffix in (".csv", ".tsv"):
        rows = _table(path, field)
    elif path.suffix == ".jsonl":
        rows = _jsonl(path, field)
    else:
        rows = _coco(path, field)
    prompts = []
    try:
        for i, text in rows:
            if not isinstance(text, str) or not text.strip():
                raise ConfigError("prompts.field", f"prompt {i} of {path.name} is empty or not text ({text!r})",
                                  "remove the row or choose another field")
            prompts.append(text.strip())
    except UnicodeDecodeError as err:
        raise _not_utf8("prompts.from", path, err) from None
    if not prompts:
        raise ConfigError("prompts.from", f"{path.name} has no prompts", "give a file with at least one")
    indices = list(range(len(prompts)))
    if sample is not None:
        if sample > len(prompts):
            raise ConfigError("prompts.sample", f"{sample} is more than the {len(prompts)} prompts of {path.name}",
                              f"sample at most {len(prompts)}")
        indices = sample_indices(len(prompts), sample, seed)
    source = {"from": str(path.resolve()), **({"field": field} if field else {}),
              **({"sample": sample, "seed": seed} if sample is not None else {})}
    return PromptSet(prompts=tuple(prompts[i] for i in indices), indices=tuple(indices), source=source)


def _not_utf8(field: str, path: Path, err: UnicodeDecodeError) -> ConfigError:
    return ConfigError(field, f"{path.name} is not UTF-8 text (byte 0x{err.object[err.start]:02x}; a binary file?)",
                       "give a UTF-8 text file of prompts")


def _text_lines(file: Path) -> list[str]:
    """``prompts_file``'s non-blank lines, stripped; an empty or non-UTF-8 file refused at ``prompts_file``."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8("prompts_file", file, err) from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("prompts_file", f"{file.name} has no prompts ({'0 bytes' if not text else 'blank lines only'})",
                          "one prompt a line")
    return prompts


def read_prompts(data: Mapping[str, Any], base: Path) -> PromptSet:
    """The experiment's prompts from its ``prompts`` (list or source) or ``prompts_file`` field."""
    if "prompts" in data and "prompts_file" in data:
        raise ConfigError("prompts_file", "given together with prompts", "use one of the two")
    if "prompts_file" in data:
        file = base / typed(data["prompts_file"], "prompts_file", str)
        if not file.is_file():
            raise ConfigError("prompts_file", f"no such file: {file}", "a text file with one prompt per line")
        if file.suffix != ".txt":
            try:
                return read_source({"from": str(file)}, base)
            except ConfigError as err:  # the field the user wrote is prompts_file
                raise ConfigError("prompts_file" if err.path == "prompts.from" else err.path, err.problem,
                                  err.allowed) from None
        prompts = _text_lines(file)
        result = PromptSet(prompts=tuple(prompts), indices=tuple(range(len(prompts))),
                           source={"from": str(file.resolve())})
    elif isinstance(data.get("prompts"), Mapping):
        result = read_source(data["prompts"], base)
    else:
        prompts = [typed(p, f"prompts[{i}]", str) for i, p in enumerate(list_of(data.get("prompts"), "prompts"))]
        for i, text in enumerate(prompts):
            if not text.strip():
                raise ConfigError(f"prompts[{i}]", "is empty", "give the prompt's text")
        result = PromptSet(prompts=tuple(prompts), indices=tuple(range(len(prompts))))
    if not result.prompts:
        raise ConfigError("prompts", "is empty", "give at least one prompt")
    return result
