"""Versions recorded in plans, reports and artifacts."""

from __future__ import annotations

from importlib import metadata


def versions() -> dict:
    """sparsify, torch and TVM versions (TVM's read without importing it)."""

    def of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"sparsify_cnn": of("sparsify-cnn"), "torch": of("torch"), "apache-tvm": of("apache-tvm")}
