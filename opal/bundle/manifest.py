"""``opal.toml``: the bundle manifest (DESIGN.md ★ Algorithm bundle)."""

from __future__ import annotations

import functools
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from opal.errors import BadInputError
from opal.release.policy import PrivacySpec

__all__ = ["Manifest", "MANIFEST_FILE", "SOURCE_FILE"]

MANIFEST_FILE = "opal.toml"
SOURCE_FILE = "algorithm.py"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def version_key(version: str) -> tuple[int, int, int]:
    major, minor, patch = version.split(".")
    return int(major), int(minor), int(patch)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str
    version: str
    description: str
    entrypoint: str
    dataset: str
    privacy: PrivacySpec
    parameters: dict[str, Any]
    # The dataset columns the algorithm reads (``reads = [...]``); None: all of them.
    # The sandbox loads and shows it only these (data minimisation, and less to decode).
    reads: tuple[str, ...] | None = None
    # Text columns the algorithm sees as pandas Categoricals (``categorical = [...]``):
    # decoded from the file's dictionary, compared and grouped by integer codes.
    categorical: tuple[str, ...] = ()

    @property
    def version_key(self) -> tuple[int, int, int]:
        return version_key(self.version)

    @classmethod
    def parse(cls, text: bytes | str, *, where: str = MANIFEST_FILE) -> Manifest:
        try:
            data = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{where}: not valid TOML ({exc})") from None
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = MANIFEST_FILE) -> Manifest:
        known = {
            "name", "version", "description", "entrypoint", "dataset", "reads", "categorical", "privacy", "parameters",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        for key in ("name", "version", "entrypoint", "dataset"):
            if not isinstance(data.get(key), str):
                raise BadInputError(f"{where}: {key} = \"...\" is required")
        if not _NAME.match(data["name"]):
            raise BadInputError(f"{where}: name {data['name']!r} must be lower-case letters, digits and _")
        if not _VERSION.match(data["version"]):
            raise BadInputError(f"{where}: version {data['version']!r} must be MAJOR.MINOR.PATCH (e.g. 1.0.0)")
        if not _IDENT.match(data["entrypoint"]) or data["entrypoint"].startswith("_"):
            raise BadInputError(f"{where}: entrypoint {data['entrypoint']!r} must be a public function name")
        if not isinstance(data.get("privacy"), dict):
            raise BadInputError(
                f"{where}: a [privacy] table is required (unit, aggregation, max_groups_per_unit) "
                "with [privacy.groups]"
            )
        parameters = data.get("parameters", {"type": "object", "additionalProperties": False})
        if not isinstance(parameters, dict):
            raise BadInputError(f"{where}: [parameters] must be a JSON Schema table")
        try:
            problem = _schema_problem(json.dumps(parameters, sort_keys=True))
        except (TypeError, ValueError):  # not JSON at all (a TOML date): checked as it is, uncached
            problem = _schema_problem.__wrapped__(parameters)
        if problem is not None:
            raise BadInputError(f"{where}: [parameters] is not a valid JSON Schema: {problem}")
        privacy = PrivacySpec.from_dict(data["privacy"])
        reads = _reads(data.get("reads"), unit=privacy.unit, where=where)
        return cls(
            name=data["name"],
            version=data["version"],
            description=str(data.get("description", "")),
            entrypoint=data["entrypoint"],
            dataset=data["dataset"],
            privacy=privacy,
            parameters=parameters,
            reads=reads,
            categorical=_categorical(data.get("categorical"), unit=privacy.unit, reads=reads, where=where),
        )

    def read_map(self) -> dict[str, tuple[str, ...]] | None:
        """``reads`` as the sandbox takes it (table → columns; the table is named
        after the schema), or None: every column."""
        return None if self.reads is None else {self.dataset: self.reads}

    def categorical_map(self) -> dict[str, tuple[str, ...]] | None:
        """``categorical`` as the sandbox takes it (table → text columns), or None."""
        return {self.dataset: self.categorical} if self.categorical else None

    def check_reads(self, columns: Any, *, dataset: str) -> None:
        """Raise BadInputError unless every column the bundle reads is one of
        ``columns`` (the schema of ``dataset``, which is public: column → kind)
        and every ``categorical`` column is one of its text columns: decided
        without data, before anything is spent."""
        missing = [c for c in (self.reads or ()) if c not in columns]
        if missing:
            raise BadInputError(
                f"{self.name} {self.version} reads column(s) {', '.join(missing)} that {dataset} does not have; "
                f"its columns: {', '.join(columns)}"
            )
        kinds = columns if isinstance(columns, dict) else {}
        not_text = [c for c in self.categorical if c not in columns or kinds.get(c, "string") != "string"]
        if not_text:
            texts = [c for c in columns if kinds.get(c, "string") == "string"]
            raise BadInputError(
                f"{self.name} {self.version} asks for {', '.join(not_text)} as categorical, but only text columns "
                f"can be; the text columns of {dataset}: {', '.join(texts) or 'none'}"
            )

    def validate_params(self, params: Any) -> None:
        """Raise BadInputError unless ``params`` satisfies the bundle's JSON Schema."""
        import jsonschema  # ~80 ms: only where a schema is checked, not on every client start

        validator = jsonschema.Draft202012Validator(self.parameters)
        errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            raise BadInputError(
                f"params do not match the schema of {self.name} {self.version} at {where}: "
                f"{err.message}; see opal algo review for the schema"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "entrypoint": self.entrypoint,
            "dataset": self.dataset,
        }
        if self.reads is not None:
            out["reads"] = list(self.reads)
        if self.categorical:
            out["categorical"] = list(self.categorical)
        return {**out, "privacy": self.privacy.to_dict(), "parameters": self.parameters}


def _reads(value: Any, *, unit: str, where: str) -> tuple[str, ...] | None:
    """``reads`` as declared: absent (every column), or a list of distinct column
    names holding the privacy unit (the sandbox replaces it by the run's pseudonyms,
    and contributions are per unit)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise BadInputError(f'{where}: reads must be a list of column names, e.g. reads = ["{unit}", "day"]')
    if len(set(value)) != len(value):
        twice = sorted({c for c in value if value.count(c) > 1})
        raise BadInputError(f"{where}: reads names {', '.join(twice)} more than once")
    if unit not in value:
        raise BadInputError(f"{where}: reads must include the privacy unit column {unit!r}")
    return tuple(value)


def _categorical(value: Any, *, unit: str, reads: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """``categorical`` as declared: absent (none), or distinct column names the
    bundle reads, not the privacy unit (the sandbox gives it pseudonyms)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise BadInputError(f'{where}: categorical must be a list of text column names, e.g. categorical = ["region"]')
    if len(set(value)) != len(value):
        twice = sorted({c for c in value if value.count(c) > 1})
        raise BadInputError(f"{where}: categorical names {', '.join(twice)} more than once")
    if unit in value:
        raise BadInputError(
            f"{where}: categorical cannot hold the privacy unit column {unit!r} (the sandbox replaces it by numbers)"
        )
    unread = [c for c in value if reads is not None and c not in reads]
    if unread:
        raise BadInputError(f"{where}: categorical names {', '.join(unread)}, which reads does not list")
    return tuple(value)


@functools.lru_cache(maxsize=256)
def _schema_problem(schema: Any) -> str | None:
    """Why the JSON Schema (as JSON text) is not a valid Draft 2020-12 schema, or None.

    Checking a schema against the meta-schema takes milliseconds and every run
    re-parses its bundle's manifest: the verdict on the same text is cached.
    """
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(schema) if isinstance(schema, str) else schema)
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None
