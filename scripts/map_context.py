"""Produce the MAP build context offline, without Docker.

    .venv/bin/python scripts/map_context.py --model models/liver-demo --out build/map-context

Runs holoscan-cli 4.2.0's packager (`monai-deploy package app -c app.yaml -m MODEL ...`,
artifact sources from scripts/map/package-source.json, so nothing is downloaded) in-process,
with its final `docker buildx build` (and image export) replaced by a copy of the prepared
context. The
packager writes the MAP manifests (map/app.json, map/pkg.json), copies app/, app.yaml and the
model; it copies only the app folder, so this script adds the project's packages (src/) and
replaces the generated Dockerfile with the repository's Dockerfile (kept as
Dockerfile.holoscan-cli for reference). Build and run where Docker and a GPU exist:

    docker build -t tags-seg-map:0.1.0 build/map-context
    monai-deploy run tags-seg-map:0.1.0 -i DICOM_FOLDER -o OUTPUT_FOLDER
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "requirements.txt", "requirements-app.txt", "README.md", "tags", "operators", "training", "app",
                 "benchmarks")


def build_context(model: Path, out: Path, tag: str = "tags-seg-map:0.1.0") -> Path:
    from holoscan_cli.__main__ import main as holoscan_main
    from holoscan_cli.packager import container_builder

    model = Path(model).resolve()
    if not (model / "metadata.json").is_file():
        raise SystemExit(f"error: no model folder at {model}")
    out = Path(out)
    (out.parent / "map-image").mkdir(parents=True, exist_ok=True)
    captured = {}

    def fake_build(**kwargs):
        captured.update(kwargs)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(kwargs["context_path"], out, symlinks=True)

    class NoBuilder:
        name = "none"

    # The packager takes every sub-folder of -m as a model of its own: a model folder's nested
    # organ/ would become a second model beside it. Handed a folder holding only the model
    # folder, it copies that one whole.
    staged = out.parent / "map-models"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(model, staged / model.name)
    argv = ["monai-deploy", "package", str(REPO / "app"), "-c", str(REPO / "app.yaml"), "-m", str(staged), "-t", tag,
            "--platform", "x86_64", "--sdk", "monai-deploy", "--sdk-version", "4.0.0",
            "--source", str(REPO / "scripts" / "map" / "package-source.json"), "--output", str(out.parent / "map-image")]
    with mock.patch.object(container_builder, "build_docker_image", fake_build), \
            mock.patch.object(container_builder, "create_and_get_builder", lambda name: NoBuilder()), \
            mock.patch.object(container_builder, "docker_export_tarball", lambda file, tag: None), \
            mock.patch.object(sys, "argv", argv):
        try:
            holoscan_main()
        except SystemExit as e:
            if e.code not in (0, None) or not captured:
                raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    if not captured:
        raise RuntimeError("holoscan-cli did not reach the image build step")
    generated = out / "Dockerfile"
    if generated.exists():
        generated.rename(out / "Dockerfile.holoscan-cli")
    shutil.copy(REPO / "Dockerfile", out / "Dockerfile")
    src = out / "src"
    src.mkdir(exist_ok=True)
    for name in PROJECT_FILES:
        path = REPO / name
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        (shutil.copytree(path, src / name, ignore=ignore) if path.is_dir() else shutil.copy(path, src / name))
    readable_by_all(out)
    return out


def readable_by_all(root: Path) -> None:
    """Folders 755 and files 644 (755 if executable) below ``root``: the image's user
    (holoscan) must read what the build copies, whatever the permissions in the working tree
    (a model folder saved with 700 made the container fail to list its models)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(0o755 if path.is_dir() or mode & 0o100 else 0o644)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "liver-demo"))
    p.add_argument("--out", default=str(REPO / "build" / "map-context"))
    a = p.parse_args(argv)
    out = build_context(Path(a.model), Path(a.out))
    print(f"MAP build context: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
