"""Checkpoints that never unpickle: safetensors weights with the JSON config embedded, written atomically.

A checkpoint ``model.safetensors`` holds the tensors and, in its header metadata, the format version, the
JSON config and a SHA-256 of the tensor bytes. A readable ``model.json`` copy of the config is written
beside it. Loading refuses a truncated or corrupted file, a newer format, a config that differs from
the one expected or that is not a JSON object, and tensors of the wrong dtype or with NaN or inf values (named),
each with a :class:`~shared_embed.errors.CheckpointError` saying what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import CheckpointError

FORMAT_NAME = "gentransfer"
FORMAT_VERSION = 1


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and setting it back, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    A crash at any point leaves either the previous file or the new one, never a partial file. The file gets
    the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask), so a run folder shared with a
    group stays readable to it (the temporary file starts private: ``mkstemp`` creates it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of ``tensors`` in sorted order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_metadata(raw: bytes, path: Path) -> dict[str, str]:
    if len(raw) < 8:
        raise CheckpointError(f"{path} is truncated: {len(raw)} bytes, not a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise CheckpointError(f"{path} is truncated or corrupted: header of {n} bytes, file of {len(raw)}")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has a corrupted header: {err}") from err
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a gentransfer checkpoint (no '{FORMAT_NAME}' metadata)")
    return meta


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: dict[str, Tensor] | nn.Module,
    config: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save tensors (or a module's state dict) with a JSON-serialisable ``config``; return the path.

    ``extra`` is JSON-serialisable state that is not a tensor (e.g. a step counter, an RNG state).
    """
    path = Path(path)
    if isinstance(tensors, nn.Module):
        tensors = tensors.state_dict()
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        config_json = json.dumps(config, sort_keys=True)
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as err:
        raise CheckpointError(f"config must be JSON-serialisable: {err}") from err
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": config_json,
        "extra": extra_json,
        "sha256": tensor_digest(flat),
    }
    atomic_write_bytes(path, st_save(flat, metadata=meta))
    atomic_write_text(path.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint: ``(tensors, config, extra)``. Never unpickles; verifies format and checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    meta = _read_metadata(raw, path)
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError as err:
        raise CheckpointError(f"{path} has an unreadable format_version {meta.get('format_version')!r}") from err
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this gentransfer reads ({FORMAT_VERSION}); upgrade"
        )
    try:
        tensors = st_load(raw)
    except Exception as err:  # safetensors raises its own error types for malformed data
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from err
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: the tensor checksum does not match its header")
    try:
        config = json.loads(meta["config"])
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has a corrupted config: {err}") from err
    for name, value in (("config", config), ("extra", extra)):
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{path} has a malformed {name}: expected a JSON object, got a JSON {type(value).__name__}"
            )
    return tensors, config, extra


def check_tensors(path: str | os.PathLike[str], stored: dict[str, Tensor], wanted: dict[str, Tensor]) -> None:
    """CheckpointError naming the first stored tensor whose dtype is not the module's (integer-truncated
    weights) or whose floating values are not all finite (a NaN in a saved scaler): checked before any is used."""
    for name in sorted(stored):
        t, want = stored[name], wanted.get(name)
        if want is not None and t.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {t.dtype}, the model needs {want.dtype}")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN or inf value(s) of {t.numel()}; "
                "a checkpoint's weights must be finite"
            )


def config_diff(expected: Any, found: Any, prefix: str = "", found_name: str = "checkpoint") -> list[str]:
    """Human-readable differences between two JSON-like configs (empty when equal); ``found_name`` says
    where ``found`` comes from."""
    if isinstance(expected, dict) and isinstance(found, dict):
        out: list[str] = []
        for k in sorted(set(expected) | set(found)):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in found:
                out.append(f"{key}: expected {expected[k]!r}, missing in {found_name}")
            elif k not in expected:
                out.append(f"{key}: unexpected in {found_name} ({found[k]!r})")
            else:
                out.extend(config_diff(expected[k], found[k], key, found_name))
        return out
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        expected, found = list(expected), list(found)
    return [] if expected == found else [f"{prefix or 'config'}: expected {expected!r}, {found_name} has {found!r}"]


def load_module_state(
    path: str | os.PathLike[str],
    module: nn.Module,
    expected_config: dict[str, Any],
    *,
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Load weights into ``module`` after checking the stored config equals ``expected_config``.

    ``normalize`` maps the stored config first (e.g. drops keys an older version kept that are no longer part of
    the weights). Returns the checkpoint's ``extra`` dict. Raises CheckpointError naming every differing key.
    """
    tensors, config, extra = load_checkpoint(path)
    if normalize is not None:
        config = normalize(config)
    diff = config_diff(json.loads(json.dumps(expected_config)), config)
    if diff:
        raise CheckpointError(f"{path} was saved with a different configuration: " + "; ".join(diff))
    check_tensors(path, tensors, module.state_dict())
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this module: {err}") from err
    return extra
