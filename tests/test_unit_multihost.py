"""A unit over two actor systems on this computer: the leader (run_unit.py)
and a member host (the agent, `python -m observatory.member`) that holds
cam01. The camera placed on the member exposes through the night; the member
is killed mid-night (the unit notices within 10 s and carries on with cam00);
the member comes back and cam01 is restored and exposes again."""
import time

import yaml

from tests.test_multihost import Member, free_port, pids_with
from tests.test_unit_faults import DARK_START, science_count
from tests.unit_runner import RunningUnit, write_config


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return seen


def test_cameras_on_a_member_host_are_lost_and_restored(tmp_path):
    leader_port, member_port = free_port(), free_port()
    overrides = {"actor_system": {"admin_port": leader_port},
                 "hosts": {"camhost": {"address": "127.0.0.1", "admin_port": member_port}},
                 "supervision.heartbeat_interval": 2.0}     # the defaults: detection within 10 s
    path = write_config(tmp_path, overrides)
    cfg = yaml.safe_load(path.read_text())
    cfg["actor_system"]["admin_port"] = leader_port
    cfg["cameras"][1]["host"] = "camhost"
    path.write_text(yaml.safe_dump(cfg))

    member = Member(tmp_path, leader_port, host="camhost", port=member_port)
    unit = None
    try:
        member.start()
        unit = RunningUnit(tmp_path, start=DARK_START, speed=60, config=path)
        unit.wait_for(lambda: science_count(unit, "cam01") >= 2, 150, "cam01 frames from the member host")
        cam01 = next(a for a in unit.status()["actors"] if a["name"] == "cam01")
        assert cam01["host"] == "camhost" and member.admin_pid in _ancestors(cam01["pid"]), \
            "cam01 runs in the member's actor system"
        assert unit.proc.pid not in _ancestors(cam01["pid"])

        member.kill()
        killed = time.time()
        lost = unit.wait_for(lambda: unit.query(
            "SELECT wall_unix, message FROM events WHERE kind='host' AND message LIKE 'cam01 on host camhost lost%'"),
            30, "cam01 lost")
        assert lost[0][0] - killed < 10.0, f"detected after {lost[0][0] - killed:.1f} s"
        after_loss = unit.query("SELECT MAX(time_unix) FROM events")[0][0]
        unit.wait_for(lambda: science_count(unit, "cam00", after=after_loss) >= 2, 60, "cam00 observing on")

        member.start()
        unit.wait_for(lambda: unit.query("SELECT 1 FROM events WHERE message='restoring cam01 on camhost'"),
                      60, "cam01 restored")
        back = unit.query("SELECT MAX(time_unix) FROM events")[0][0]
        unit.wait_for(lambda: science_count(unit, "cam01", after=back) >= 1, 90, "cam01 exposing again")
        assert unit.terminate() == 0
        paths = {p for (p,) in unit.query("SELECT path FROM exposures")}
        assert paths == {str(p) for p in (unit.pandir / "images").rglob("*.fits")}
    finally:
        if unit is not None:
            unit.kill()
        member.cleanup()
        assert not pids_with(str(member.pandir))
