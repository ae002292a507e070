"""The model store: atomic publication, manifests with sha256, no half-written version."""

import json

import pytest

from flywheel.channel import ADAPTER_KIND
from flywheel.store import ModelStore, StoreError


def write_adapter(path):
    (path / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8}))


def test_publish_writes_files_and_a_manifest_with_their_sha256(tmp_path):
    store = ModelStore(tmp_path)
    manifest = store.publish("v1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND, metrics={"kl": 1.5})
    assert {f.path for f in manifest.files} == {"adapter_model.safetensors", "adapter_config.json"}
    assert store.verify("v1").metrics == {"kl": 1.5}
    assert [m.version for m in store.versions()] == ["v1"]
    assert store.latest().parent == "base"


def test_verify_refuses_an_altered_file(tmp_path):
    store = ModelStore(tmp_path)
    store.publish("v1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)
    (tmp_path / "v1" / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match"):
        store.verify("v1")


def test_a_writer_that_fails_leaves_nothing_visible(tmp_path):
    store = ModelStore(tmp_path)

    def broken(path):
        write_adapter(path)
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish("v1", broken, parent="base", base_model="m", kind=ADAPTER_KIND)
    assert store.versions() == []
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_writer_are_removed_on_open(tmp_path):
    (tmp_path / ".tmp-v2-abc").mkdir()
    (tmp_path / ".tmp-v2-abc" / "adapter_model.safetensors").write_bytes(b"half")
    store = ModelStore(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert store.latest() is None


def test_versions_are_never_overwritten_and_names_are_plain(tmp_path):
    store = ModelStore(tmp_path)
    store.publish("v1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)
    with pytest.raises(StoreError, match="already exists"):
        store.publish("v1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)
    with pytest.raises(StoreError, match="plain name"):
        store.publish("../evil", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)


def test_every_read_refuses_a_name_or_file_that_leads_out_of_the_store(tmp_path):
    """A PolicyPublished naming a refused candidate (`../trainer/...`) or any directory with a manifest."""
    store = ModelStore(tmp_path / "store")
    outside = ModelStore(tmp_path / "trainer" / "work" / "candidates")
    outside.publish("cand-1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)
    for name in ("../trainer/work/candidates/cand-1", str(tmp_path / "trainer" / "work" / "candidates" / "cand-1"),
                 ".hidden", "a/b", ""):  # fmt: skip
        for read in (store.path, store.manifest, store.verify):
            with pytest.raises(StoreError, match="not a plain name"):
                read(name)
    (tmp_path / "store" / "linked").symlink_to(tmp_path / "trainer" / "work" / "candidates" / "cand-1")
    with pytest.raises(StoreError, match="leads out of the store"):
        store.verify("linked")
    store.publish("v1", write_adapter, parent="base", base_model="m", kind=ADAPTER_KIND)
    manifest = json.loads((tmp_path / "store" / "v1" / "manifest.json").read_text())
    manifest["files"].append({"path": "../../outside.bin", "sha256": "0" * 64, "size": 0})
    (tmp_path / "store" / "v1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="outside the version"):
        store.verify("v1")


def test_a_missing_version_is_named_without_the_stores_path(tmp_path):
    """The message becomes a refusal reason that GET /v1/policy and the policy topic show."""
    with pytest.raises(StoreError) as missing:
        ModelStore(tmp_path / "store").verify("v9")
    assert "v9" in str(missing.value) and str(tmp_path) not in str(missing.value)
