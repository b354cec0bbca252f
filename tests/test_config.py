"""Settings precedence and derivation: flag > environment > .env >
defaults, the backend URL the CLI gets, and the variables documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from statekeeper import config
from statekeeper.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def load(tmp_path, environ, env_file=None, overrides=None):
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file)
    environ = {"STATEKEEPER_SANDBOX_DIR": str(tmp_path / "none"), **environ}
    return config.load(overrides, workspace=tmp_path, environ=environ)


def test_defaults(tmp_path):
    settings = load(tmp_path, {})
    assert settings.bucket == "rocketseat-pulumi-state"
    assert settings.region == "us-east-1"
    assert settings.stacks == ("staging",)
    assert settings.backend_url == (
        "s3://rocketseat-pulumi-state?region=us-east-1")
    assert settings.project_dir == tmp_path / "stacks"
    assert settings.state_root == ".pulumi/"


def test_flag_beats_environment_beats_env_file(tmp_path):
    env_file = "STATE_BUCKET=from-dotenv\nAWS_REGION=eu-west-1\n"
    assert load(tmp_path, {}, env_file).bucket == "from-dotenv"
    from_env = load(tmp_path, {"STATE_BUCKET": "from-environ"}, env_file)
    assert from_env.bucket == "from-environ"
    assert from_env.region == "eu-west-1"
    flagged = load(tmp_path, {"STATE_BUCKET": "from-environ"}, env_file,
                   {"STATE_BUCKET": "from-flag"})
    assert flagged.bucket == "from-flag"


def test_backend_url_derived_with_prefix_and_endpoint(tmp_path):
    settings = load(tmp_path, {
        "STATE_BUCKET": "acme-state", "STATE_PREFIX": "/team/infra/",
        "AWS_REGION": "sa-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000/"})
    assert settings.backend_url == (
        "s3://acme-state/team/infra?region=sa-east-1"
        "&endpoint=http%3A%2F%2F127.0.0.1%3A9000&use_path_style=true")
    assert settings.state_root == "team/infra/.pulumi/"
    assert settings.uses_plain_http


def test_explicit_backend_url_sets_bucket_and_prefix(tmp_path):
    settings = load(tmp_path, {
        "PULUMI_BACKEND_URL": "s3://acme-state/infra?region=us-east-1"})
    assert (settings.bucket, settings.prefix) == ("acme-state", "infra")
    assert settings.backend_url == "s3://acme-state/infra?region=us-east-1"


def test_backend_url_that_disagrees_names_both(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, {"PULUMI_BACKEND_URL": "s3://a-state",
                        "STATE_BUCKET": "b-state"})
    assert "'a-state'" in str(raised.value)
    assert "'b-state'" in str(raised.value)


def test_custom_endpoint_allows_regions_aws_does_not_have(tmp_path):
    settings = load(tmp_path, {"AWS_REGION": "us-middle-7",
                               "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert settings.region == "us-middle-7"


@pytest.mark.parametrize("name", [
    "abc", "a" * 63, "my.state.bucket", "state-2026"])
def test_valid_bucket_names(name):
    config.check_bucket_name(name, "STATE_BUCKET")


@pytest.mark.parametrize("name", [
    "ab", "a" * 64, "Upper", "under_score", "-leading", "trailing-",
    "two..dots", "dot.-hyphen", "10.0.0.1", "xn--punycode",
    "sthree-x", "name-s3alias", "name--ol-s3", "name--x-s3"])
def test_invalid_bucket_names(name):
    with pytest.raises(ConfigError):
        config.check_bucket_name(name, "STATE_BUCKET")


def test_env_example_documents_every_variable():
    text = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    assert documented == set(config.VARIABLES)
    # Each variable has a comment line right above it.
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", line):
            assert lines[index - 1].startswith("#"), line
