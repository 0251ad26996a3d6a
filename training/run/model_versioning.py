"""Model versioning: a file-based registry of trained models with checksums, stages and safe concurrent writes."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from training.run.artifacts import IXTOWORD_FILE, WORDTOIX_FILE
from training.utils.io import ensure_dir, load_json, save_json

logger = logging.getLogger(__name__)

STAGES = ("none", "staging", "production", "archived")
REQUIRED_VOCAB_FILES = (WORDTOIX_FILE, IXTOWORD_FILE)
REGISTRY_FILE = "registry.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".registry.lock"
# SemVer 2.0 core plus an optional pre-release; build metadata (+...) is left out on purpose.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$"
)


class ModelIntegrityError(RuntimeError):
    """A registered file is missing or its SHA-256 no longer matches the manifest."""


def semver_key(version: str) -> tuple:
    """Sort key with SemVer precedence: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0 < 1.0.1."""
    match = _SEMVER.match(version)
    if match is None:
        raise ValueError(
            f"'{version}' is not a semantic version: use MAJOR.MINOR.PATCH with an optional -prerelease, e.g. 1.2.0 or 1.2.0-rc.1"
        )
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    # Numeric identifiers sort numerically and before alphanumeric ones.
    ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelVersionManager:
    """Registry at `root`: one directory per version (model, vocabulary, manifest.json) and a registry.json index."""

    def __init__(self, root: str | Path):
        self.root = ensure_dir(root)
        self.index_path = self.root / REGISTRY_FILE

    # --- index -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Every read-modify-write of the index happens under this lock, so two processes never lose an update.
        with FileLock(self.root / LOCK_FILE):
            yield

    def _read_index(self) -> dict[str, dict[str, Any]]:
        # The index is replaced atomically, so reading it without the lock still sees a whole file.
        if not self.index_path.is_file():
            return {}
        return load_json(self.index_path)["versions"]

    def _write_index(self, versions: dict[str, dict[str, Any]]) -> None:
        ordered = {v: versions[v] for v in sorted(versions, key=semver_key)}
        save_json({"versions": ordered}, self.index_path)

    def _record(self, version: str) -> dict[str, Any]:
        versions = self._read_index()
        if version not in versions:
            known = ", ".join(sorted(versions, key=semver_key)) or "none"
            raise KeyError(f"model version '{version}' is not registered in {self.root} (registered: {known})")
        return self._resolve(versions[version])

    def _resolve(self, entry: dict[str, Any]) -> dict[str, Any]:
        # The index stores paths relative to the version directory so the registry can be moved or copied.
        version_dir = self.root / entry["version"]
        record = dict(entry)
        record["path"] = str(version_dir)
        record["model_path"] = str(version_dir / entry["model_file"])
        record["vocab_files"] = {name: str(version_dir / name) for name in entry["vocab_files"]}
        return record

    # --- registering -----------------------------------------------------------------------

    def register_version(
        self,
        version: str,
        model_path: str | Path,
        vocab_dir: str | Path,
        run_id: str,
        metrics: dict[str, float],
        description: str = "",
        stage: str = "none",
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Copy the model and vocabulary into root/<version>/ with checksums, and add it to the index."""
        semver_key(version)
        _check_stage(stage)
        model_path, vocab_dir = Path(model_path), Path(vocab_dir)
        if not model_path.is_file():
            raise FileNotFoundError(f"model file not found: {model_path}")
        missing = [name for name in REQUIRED_VOCAB_FILES if not (vocab_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"vocabulary file(s) {', '.join(missing)} not found in {vocab_dir}")
        if version in self._read_index() and not overwrite:  # fail before copying anything
            raise FileExistsError(_exists_message(version, self.root))
        # Every top-level JSON beside the vocabulary (tokenizer metadata, config snapshot, run summary) belongs
        # to the run; registry.json / manifest.json are skipped because they would clash with ours.
        vocab_files = sorted(p for p in vocab_dir.glob("*.json") if p.is_file() and p.name not in (REGISTRY_FILE, MANIFEST_FILE))
        if model_path.name in {p.name for p in vocab_files} | {MANIFEST_FILE}:
            raise ValueError(f"model file name '{model_path.name}' clashes with a vocabulary/manifest file name")

        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".staging-{version}-"))
        try:
            for source in [model_path, *vocab_files]:
                shutil.copy2(source, staging / source.name)
            entry = {
                "version": version,
                "run_id": run_id,
                "description": description,
                "stage": stage,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "metrics": dict(metrics),
                "model_file": model_path.name,
                "vocab_files": [p.name for p in vocab_files],
            }
            files = [model_path.name, *entry["vocab_files"]]
            manifest = {**entry, "checksums": {name: sha256_file(staging / name) for name in files}}
            del manifest["stage"]  # the stage changes over time; the index holds it
            save_json(manifest, staging / MANIFEST_FILE)
            with self._locked():
                versions = self._read_index()
                self._install(staging, version, exists=version in versions, overwrite=overwrite)
                versions[version] = entry
                if stage == "production":
                    _demote_production(versions, keep=version)
                self._write_index(versions)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # already renamed away on success
        logger.info("registered model version %s in %s", version, self.root)
        return self._resolve(entry)

    def _install(self, staging: Path, version: str, exists: bool, overwrite: bool) -> None:
        target = self.root / version
        if exists and not overwrite:
            raise FileExistsError(_exists_message(version, self.root))
        old = None
        if target.exists():  # a replaced version, or a directory left by a crash before its index update
            old = Path(tempfile.mkdtemp(dir=self.root, prefix=f".old-{version}-"))
            target.rename(old / "version")
        staging.rename(target)  # atomic: readers see the old directory or the complete new one
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------

    def list_versions(self) -> list[dict[str, Any]]:
        """All versions, lowest semantic version first."""
        versions = self._read_index()
        return [self._resolve(versions[v]) for v in sorted(versions, key=semver_key)]

    def get_version(self, version: str) -> dict[str, Any]:
        return self._record(version)

    def get_latest_version(self) -> dict[str, Any] | None:
        """The highest semantic version (pre-releases rank below their release), or None when empty."""
        versions = self.list_versions()
        return versions[-1] if versions else None

    def compare_versions(self, version_a: str, version_b: str) -> dict[str, Any]:
        """Metric deltas (b - a) for metrics both versions have, and the metrics only one of them has."""
        metrics_a, metrics_b = self._record(version_a)["metrics"], self._record(version_b)["metrics"]
        shared = [m for m in metrics_a if m in metrics_b]
        return {
            "version_a": version_a,
            "version_b": version_b,
            "metrics_a": metrics_a,
            "metrics_b": metrics_b,
            "deltas": {m: metrics_b[m] - metrics_a[m] for m in shared},
            "only_in_a": [m for m in metrics_a if m not in metrics_b],
            "only_in_b": [m for m in metrics_b if m not in metrics_a],
        }

    # --- stages ----------------------------------------------------------------------------

    def promote(self, version: str, stage: str) -> dict[str, Any]:
        """Move a version to a stage; promoting to production archives the previous production version."""
        _check_stage(stage)
        with self._locked():
            versions = self._read_index()
            self._record(version)  # clear error for an unknown version
            versions[version]["stage"] = stage
            if stage == "production":
                _demote_production(versions, keep=version)
            self._write_index(versions)
        return self._resolve(versions[version])

    # --- integrity and loading -------------------------------------------------------------

    def verify(self, version: str) -> dict[str, Any]:
        """Recompute every file's SHA-256; raise ModelIntegrityError naming the first file that differs."""
        record = self._record(version)
        version_dir = Path(record["path"])
        manifest = load_json(version_dir / MANIFEST_FILE)
        for name, expected in manifest["checksums"].items():
            path = version_dir / name
            if not path.is_file():
                raise ModelIntegrityError(f"model version {version}: file {path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise ModelIntegrityError(
                    f"model version {version}: checksum mismatch for {path} "
                    f"(manifest sha256 {expected[:12]}..., file has {actual[:12]}...); the file was changed or corrupted"
                )
        return record

    def load_model(self, version: str, **load_kwargs: Any):
        """Verify checksums, then keras.saving.load_model (extra kwargs such as compile=False are passed on)."""
        record = self.verify(version)
        from training import load_model

        return load_model(record["model_path"], **load_kwargs)


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}' is not one of {', '.join(STAGES)}")


def _demote_production(versions: dict[str, dict[str, Any]], keep: str) -> None:
    for name, entry in versions.items():
        if name != keep and entry["stage"] == "production":
            entry["stage"] = "archived"
            logger.info("model version %s moved from production to archived", name)


def _exists_message(version: str, root: Path) -> str:
    return f"model version {version} is already registered in {root}; pick a new version or pass overwrite=True"
