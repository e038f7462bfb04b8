"""The front-end kit type-checks against OpenAI's own ChatKit types (``@openai/chatkit``).

``tsc --noEmit`` (strict, ``checkJs``) compiles ``kit_usage.ts``, which assigns what
``createChatKitApi`` and ``connectChatKit`` build to ``ChatKitOptions['api']``, together with
every module of ``broker/static/`` (each starts with ``// @ts-check``). TypeScript and the
ChatKit types are installed from npm at pinned versions into a folder under the temp dir,
keyed by those versions, so reruns reuse it. Without npm (or the registry) the test skips,
except under ``CI``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ..support import ROOT, need

TYPESCRIPT = "7.0.2"
CHATKIT_TYPES = "1.9.0"  # @openai/chatkit: types only, the runtime comes from OpenAI's CDN
STATIC = ROOT / "broker" / "static"
USAGE = Path(__file__).parent / "kit_usage.ts"
KIT = STATIC / "chatkit-broker.js"


@pytest.fixture(scope="module")
def tsc() -> Path:
    """``node_modules`` with the pinned packages, installed once per version pair."""
    npm = shutil.which("npm")
    need(npm is not None, "npm is not installed")
    home = Path(tempfile.gettempdir()) / f"chatkit-broker-tsc-{TYPESCRIPT}-chatkit-{CHATKIT_TYPES}"
    binary = home / "node_modules" / ".bin" / "tsc"
    if not binary.exists():
        partial = Path(tempfile.mkdtemp(prefix=home.name + ".", dir=home.parent))
        (partial / "package.json").write_text('{"private": true}\n')
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts=false",
                "--loglevel=error",
                f"typescript@{TYPESCRIPT}",
                f"@openai/chatkit@{CHATKIT_TYPES}",
            ],
            cwd=partial,
            capture_output=True,
            text=True,
            timeout=300,
        )
        need(done.returncode == 0, f"npm install failed: {done.stderr[-500:]}")
        try:
            os.rename(partial, home)  # atomic: a concurrent run either wins or reuses ours
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    assert binary.exists(), f"{binary} is missing after npm install"
    return home


def typecheck(home: Path, tmp_path: Path, kit: Path = KIT) -> subprocess.CompletedProcess[str]:
    """Runs ``tsc --noEmit`` over the usage file and the static modules, with ``kit`` as the kit."""
    others = [str(p) for p in sorted(STATIC.glob("*.js")) if p.name != KIT.name]
    config = {
        "compilerOptions": {
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "lib": ["es2022", "dom", "dom.iterable"],
            "allowJs": True,
            "checkJs": True,
            "strict": True,
            "noEmit": True,
            "types": [],
            "paths": {
                "chatkit-broker": [str(kit)],
                "./chatkit-broker.js": [str(kit)],
                "@openai/chatkit": [str(home / "node_modules/@openai/chatkit/types/index.d.ts")],
            },
        },
        "files": [str(USAGE), str(kit), *others],
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(config, indent=2))
    return subprocess.run(
        [
            str(home / "node_modules/.bin/tsc"),
            "-p",
            str(tmp_path / "tsconfig.json"),
            "--pretty",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_static_module_is_type_checked():
    for path in STATIC.glob("*.js"):
        assert path.read_text().startswith("// @ts-check\n"), f"{path.name} lacks // @ts-check"


def test_the_kit_builds_what_chatkit_options_api_accepts(tsc: Path, tmp_path: Path):
    done = typecheck(tsc, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("before", "after", "complaint"),
    [
        # a wrong field name in the custom-backend api
        (
            "const api = { url, domainKey: backend.domain_key, fetch: fetchWithSecret };",
            "const api = { url, domain_key: backend.domain_key, fetch: fetchWithSecret };",
            "domain_key",
        ),
        # getClientSecret resolving to the whole answer instead of the secret string
        (
            "return answer.client_secret;\n    },\n  };",
            "return answer;\n    },\n  };",
            "'MintAnswer' is not assignable to type 'string'",
        ),
        # the typedef of the custom api drifting from ChatKit's CustomApiConfig
        (
            "{url: string, domainKey: string, fetch: typeof fetch, uploadStrategy?:",
            "{url: string, domainkey: string, fetch: typeof fetch, uploadStrategy?:",
            "Property 'domainKey' is missing",
        ),
    ],
    ids=["domain_key", "secret-not-a-string", "typedef-drift"],
)
def test_a_kit_that_builds_the_wrong_shape_fails(
    tsc: Path, tmp_path: Path, before, after, complaint
):
    source = KIT.read_text()
    assert source.count(before) == 1, f"the mutation no longer applies: {before!r}"
    broken = tmp_path / "chatkit-broker.js"
    broken.write_text(source.replace(before, after))
    done = typecheck(tsc, tmp_path, kit=broken)
    assert done.returncode != 0
    assert complaint in done.stdout, done.stdout
