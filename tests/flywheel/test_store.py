"""The model store: atomic publication, manifests with sha256, no half-written version."""

import json

import pytest

from flywheel.store import ModelStore, StoreError


def write_adapter(path):
    (path / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8}))


def test_publish_writes_files_and_a_manifest_with_their_sha256(tmp_path):
    store = ModelStore(tmp_path)
    manifest = store.publish("v1", write_adapter, parent="base", base_model="m", kind="lora", metrics={"kl": 1.5})
    assert {f.path for f in manifest.files} == {"adapter_model.safetensors", "adapter_config.json"}
    assert store.verify("v1").metrics == {"kl": 1.5}
    assert [m.version for m in store.versions()] == ["v1"]
    assert store.latest().parent == "base"


def test_verify_refuses_an_altered_file(tmp_path):
    store = ModelStore(tmp_path)
    store.publish("v1", write_adapter, parent="base", base_model="m", kind="lora")
    (tmp_path / "v1" / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match"):
        store.verify("v1")


def test_a_writer_that_fails_leaves_nothing_visible(tmp_path):
    store = ModelStore(tmp_path)

    def broken(path):
        write_adapter(path)
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish("v1", broken, parent="base", base_model="m", kind="lora")
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
    store.publish("v1", write_adapter, parent="base", base_model="m", kind="lora")
    with pytest.raises(StoreError, match="already exists"):
        store.publish("v1", write_adapter, parent="base", base_model="m", kind="lora")
    with pytest.raises(StoreError, match="plain name"):
        store.publish("../evil", write_adapter, parent="base", base_model="m", kind="lora")
