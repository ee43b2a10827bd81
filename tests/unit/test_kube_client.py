"""The Kubernetes client wrapper without a cluster: the kubeconfig rule, the resource
classes made from the table of kinds, and the connection fields handed to kopf.

The wrapper's API calls run against a real kube-apiserver in
``tests/cluster/test_operator_e2e.py``, ``test_agent_kube.py`` and ``test_cli_online.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from secgroups.kinds import KINDS
from secgroups.models import API_VERSION
from secgroups_kube import KubeConfigError, credentials, load_config
from secgroups_kube.config import config_source
from secgroups_kube.resources import (
    GLOBAL,
    NAMESPACED,
    api_version,
    global_resource,
    namespaced,
    namespaced_resource,
    to_dict,
)


def kubeconfig(path: Path, server: str, *, namespace: str | None = None) -> Path:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": "pki/ca.crt"}}
        ],
        "contexts": [
            {"name": "main", "context": context},
            {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "else"}},
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": base64.b64encode(b"cert").decode(),
                    "client-key": "/abs/client.key",
                },
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """An explicit file, two $KUBECONFIG files, a service account and a home config."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "namespace").write_text("kube-system")
    (sa / "ca.crt").write_text("ca")
    return {
        "explicit": kubeconfig(tmp_path / "explicit.yaml", "https://explicit:6443"),
        "env": kubeconfig(tmp_path / "env.yaml", "https://env:6443"),
        "home": kubeconfig(tmp_path / "home" / "config", "https://home:6443"),
        "sa": sa,
        "missing": tmp_path / "missing.yaml",
    }


def source(
    places: dict[str, Path],
    path: Path | None = None,
    *,
    kubeconfig_env: str | None = None,
    in_cluster_env: bool = True,
    sa: bool = True,
    home: bool = True,
    in_cluster: bool = False,
) -> Path | None:
    environ = {}
    if kubeconfig_env is not None:
        environ["KUBECONFIG"] = kubeconfig_env
    if in_cluster_env:
        environ["KUBERNETES_SERVICE_HOST"] = "100.64.0.1"
    return config_source(
        path,
        in_cluster=in_cluster,
        environ=environ,
        service_account=places["sa"] if sa else places["missing"],
        home_config=places["home"] if home else places["missing"],
    )


def test_an_explicit_path_wins_even_when_it_does_not_exist(places: dict[str, Path]) -> None:
    found = source(places, places["explicit"], kubeconfig_env=str(places["env"]))
    assert found == places["explicit"]
    assert source(places, places["missing"]) == places["missing"]
    with pytest.raises(KubeConfigError, match=r"missing\.yaml"):
        load_config(places["missing"])


def test_kubeconfig_env_takes_its_first_existing_file_before_the_service_account(
    places: dict[str, Path],
) -> None:
    env = f"{places['missing']}:{places['env']}:{places['explicit']}"
    assert source(places, kubeconfig_env=env) == places["env"]


def test_service_account_before_home_config(places: dict[str, Path]) -> None:
    assert source(places, kubeconfig_env=str(places["missing"])) is None
    # A token without the service host is not in a cluster.
    assert source(places, in_cluster_env=False) == places["home"]
    assert source(places, sa=False) == places["home"]


def test_in_cluster_forced_ignores_the_environment(places: dict[str, Path]) -> None:
    assert source(places, kubeconfig_env=str(places["env"]), in_cluster=True) is None


def test_nothing_found_is_one_clear_error(places: dict[str, Path]) -> None:
    with pytest.raises(KubeConfigError, match="no kubeconfig: no --kubeconfig"):
        source(places, sa=False, home=False)


def test_context_and_namespace(places: dict[str, Path]) -> None:
    conf = load_config(places["explicit"])
    assert (conf.context_name, conf.namespace, conf.cluster.server) == (
        "main",
        "default",
        "https://explicit:6443",
    )
    assert load_config(places["explicit"], "other").namespace == "else"
    with pytest.raises(KubeConfigError, match="'nope' not found"):
        load_config(places["explicit"], "nope")


def test_service_account_config(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00:64::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    conf = load_config(in_cluster=True, service_account=places["sa"])
    assert conf.cluster.server == "https://[fd00:64::1]:443"
    assert conf.namespace == "kube-system"
    creds = credentials(conf)
    assert creds.token == "sa-token"  # read from the token file at login time
    assert creds.ca_path == str(places["sa"] / "ca.crt")


def test_credentials_resolve_relative_paths_and_keep_data(places: dict[str, Path]) -> None:
    creds = credentials(load_config(places["explicit"]))
    assert creds.server == "https://explicit:6443"
    assert creds.ca_path == str(places["explicit"].parent / "pki" / "ca.crt")
    assert creds.certificate_data == base64.b64encode(b"cert").decode()
    assert creds.private_key_path == "/abs/client.key"
    assert creds.token is None and creds.insecure is None


def test_every_kind_of_the_table_has_a_resource_class_with_its_plural_and_scope() -> None:
    assert set(NAMESPACED) | set(GLOBAL) == set(KINDS)
    for kind, k in KINDS.items():
        res = namespaced_resource(kind) if k.namespaced else global_resource(kind)
        info = res._api_info
        assert (info.plural, info.resource.kind, namespaced(kind)) == (k.plural, kind, k.namespaced)
        assert api_version(kind) == API_VERSION
    assert namespaced("Pod") and not namespaced("Node") and not namespaced("Namespace")
    with pytest.raises(KeyError):
        namespaced("Deployment")


def test_to_dict_fills_api_version_and_kind() -> None:
    obj = NAMESPACED["SecurityGroup"].from_dict({"metadata": {"name": "a", "namespace": "n"}})
    assert to_dict(obj, "SecurityGroup") == {
        "apiVersion": API_VERSION,
        "kind": "SecurityGroup",
        "metadata": {"name": "a", "namespace": "n"},
    }
    assert to_dict({"metadata": {}}, "Pod")["apiVersion"] == "v1"
