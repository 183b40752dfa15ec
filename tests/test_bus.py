"""bus.py on a local root and on gs:// (real fake-gcs-server): same behaviour."""

import threading

import pytest

from showwork.bus import Bus, BusError, Marker, read_marker, run_once, stage_done, StageConflict, StageResult, write_marker


def test_roundtrips(bus):
    bus.write_bytes("a/b.bin", b"\x00\x01")
    bus.write_text("a/c.txt", "héllo")
    bus.write_json("a/d.json", {"x": [1, 2]})
    assert bus.write_jsonl("e/f.jsonl", [{"i": 1}, {"i": 2, "s": "ü"}]) == 2
    assert bus.read_bytes("a/b.bin") == b"\x00\x01"
    assert bus.read_text("a/c.txt") == "héllo"
    assert bus.read_json("a/d.json") == {"x": [1, 2]}
    assert bus.read_jsonl("e/f.jsonl") == [{"i": 1}, {"i": 2, "s": "ü"}]
    assert bus.list("a") == ["a/b.bin", "a/c.txt", "a/d.json"]
    assert bus.list("") == ["a/b.bin", "a/c.txt", "a/d.json", "e/f.jsonl"]
    assert bus.exists("a/b.bin") and not bus.exists("a/zzz")
    bus.write_text("a/c.txt", "replaced")
    assert bus.read_text("a/c.txt") == "replaced"
    bus.delete("a/c.txt")
    assert not bus.exists("a/c.txt")


def test_missing_key_names_the_uri(bus):
    with pytest.raises(FileNotFoundError, match="not on the bus: .*nope/x.json"):
        bus.read_json("nope/x.json")


def test_truncated_files_are_detected(bus):
    bus.write_text("t.jsonl", '{"a": 1}\n{"a": 2')
    with pytest.raises(BusError, match="truncated"):
        bus.read_jsonl("t.jsonl")
    bus.write_text("t.json", '{"a": ')
    with pytest.raises(BusError, match="not valid JSON"):
        bus.read_json("t.json")


def test_create_if_absent(bus):
    assert bus.create("m/_SUCCESS", b"first") is True
    assert bus.create("m/_SUCCESS", b"second") is False
    assert bus.read_bytes("m/_SUCCESS") == b"first"


def test_concurrent_marker_writers_exactly_one_wins(bus):
    results = []
    barrier = threading.Barrier(8)

    def writer(n):
        barrier.wait()
        results.append((n, write_marker(bus, Marker(stage="sft", digest="d", metrics={"writer": n}))))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, won in results if won]
    assert len(results) == 8 and len(winners) == 1
    assert read_marker(bus, "sft").metrics == {"writer": winners[0]}


def test_run_once_skips_refuses_and_checks_outputs(bus):
    calls = []

    def body():
        calls.append(1)
        bus.write_text("data/out.txt", "x")
        return StageResult(outputs=["data/out.txt"], metrics={"rows": 3})

    marker, ran = run_once(bus, "data", "digest-a", body)
    assert ran and marker.metrics == {"rows": 3} and marker.versions["showwork"]
    marker, ran = run_once(bus, "data", "digest-a", body)
    assert not ran and len(calls) == 1
    with pytest.raises(StageConflict, match="digest-a.*digest-b.*--run-id"):
        run_once(bus, "data", "digest-b", body)
    assert marker.sizes == {"data/out.txt": 1}
    bus.write_text("data/out.txt", "xy")  # replaced after the marker
    with pytest.raises(BusError, match=r"out.txt has 2 bytes, the stage wrote 1 \(truncated or replaced\)"):
        stage_done(bus, "data", "digest-a")
    bus.delete("data/out.txt")
    with pytest.raises(BusError, match="out.txt is missing"):
        stage_done(bus, "data", "digest-a")


def test_a_stage_that_claims_an_output_it_did_not_write_is_refused(bus):
    with pytest.raises(BusError, match="says it wrote .*ghost.txt"):
        run_once(bus, "data", "d", lambda: StageResult(outputs=["data/ghost.txt"]))
    assert read_marker(bus, "data") is None


def test_marker_that_is_not_json_is_an_error(bus):
    bus.write_text("data/_SUCCESS", "garbage")
    with pytest.raises(BusError):
        read_marker(bus, "data")


def test_gcs_root_without_bucket_is_an_error(gcs_server):
    with pytest.raises(BusError, match="names no bucket"):
        Bus("gs://")


def test_local_writes_leave_no_temp_files(tmp_path):
    bus = Bus(str(tmp_path))
    for i in range(5):
        bus.write_json("x.json", {"i": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_missing_bucket_is_one_clear_error(gcs_server):
    bus = Bus("gs://no-such-bucket/runs/x")
    with pytest.raises(BusError, match="cannot write gs://no-such-bucket/runs/x/a.json"):
        bus.write_json("a.json", {})
