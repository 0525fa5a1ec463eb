"""The EC2 fleet driver against moto: in-process (`mock_aws`) for the driver, and a real
`moto_server` on 127.0.0.1 where a real host-side process must share AWS state with the
test. moto runs nothing on SSM: the invocation states a host would report are set in
moto's own store, the way a fake server is told its answers."""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ssm.models import ssm_backends
from pydantic import ValidationError

from rollout.aws import (
    AwsFleet,
    AwsFleetConfig,
    FleetError,
    _membership,
    _wait_drained,
    elb_cycle,
    instance_identity,
)
from shiptypes import HostFailure, ProviderContext, ReleaseRef, RolloutSettings, Slug
from tests.fakehttp import FakeServer, Reply, Request
from tests.rollout.test_sim import ManualClock

REGION = "us-east-1"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
TAGS = {"service": "chat", "stage": "prod"}
ROOT = Path(__file__).resolve().parents[2]


def client(service: str, endpoint_url: str | None = None):  # a boto3 client
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def aws():
    with mock_aws():
        client("s3").create_bucket(Bucket="slugs")
        yield


def launch(count: int, tags: dict[str, str] | None = None, subnet: str | None = None,
           endpoint_url: str | None = None) -> list[str]:
    tags = TAGS if tags is None else tags
    spec: dict = {"TagSpecifications": [{"ResourceType": "instance", "Tags": [
        {"Key": k, "Value": v} for k, v in tags.items()]}]} if tags else {}
    if subnet:
        spec["SubnetId"] = subnet
    answer = client("ec2", endpoint_url).run_instances(ImageId="ami-12c6146b", MinCount=count,
                                                       MaxCount=count, **spec)
    return sorted(i["InstanceId"] for i in answer["Instances"])


def make_slug(folder: Path, content: bytes = b"release bytes") -> Slug:
    path = folder / f"{hashlib.sha256(content).hexdigest()[:8]}.tar.gz"
    path.write_bytes(content)
    return Slug(id=f"sha256-{hashlib.sha256(content).hexdigest()[:16]}", uri=path.as_uri(),
                size=len(content))


def release(number: int, slug: Slug | None) -> ReleaseRef:
    return ReleaseRef(id=number, pipeline="us", number=number, sha="a1b2c3d", slug=slug)


def make_fleet(state_dir: Path, clock: ManualClock | None = None, stagger: float = 120.0,
               **config: object) -> AwsFleet:
    settings = {"driver": "aws", "tags": TAGS, "slugs": {"bucket": "slugs"}, **config}
    context = ProviderContext("us", REGION, clock=clock or ManualClock(), env=KEYS,
                              state_dir=state_dir)
    return AwsFleet(AwsFleetConfig.model_validate(settings), RolloutSettings(stagger=stagger),
                    context)


def capture_sends(fleet: AwsFleet) -> list[dict]:
    """What the driver asked SSM to run, as it left the client (moto's own record of a
    command lists every instance in the region as a target)."""
    sent: list[dict] = []
    fleet.ssm.meta.events.register("before-parameter-build.ssm.SendCommand",
                                   lambda params, **_kwargs: sent.append(dict(params)))
    return sent


def set_invocation(instance: str, status: str, details: str | None = None, stderr: str = "",
                   code: int = -1) -> None:
    """What the host's SSM agent would report, written into moto's store (in every
    command: moto makes each one target every instance)."""
    backend = ssm_backends[DEFAULT_ACCOUNT_ID][REGION]
    for command in backend._commands:
        for invocation in command.invocations:
            if invocation["InstanceId"] != instance:
                continue
            was_done = invocation["Status"] not in ("Pending", "InProgress", "Delayed")
            done = status not in ("Pending", "InProgress", "Delayed")
            command.completed_count += int(done) - int(was_done)
            invocation.update(Status=status, StatusDetails=details or status,
                              StandardErrorContent=stderr, ResponseCode=code,
                              ExecutionEndDateTime="" if not done else
                              invocation["ExecutionStartDateTime"])


def count_calls(fleet: AwsFleet, operation: str) -> list[str]:
    calls: list[str] = []
    fleet.ssm.meta.events.register(f"before-call.ssm.{operation}",
                                   lambda **_kwargs: calls.append(operation))
    return calls


# --- discovery, slugs, commands ------------------------------------------------------------


def test_publish_tells_every_running_tagged_instance_and_no_other(aws, tmp_path: Path) -> None:
    chosen = launch(3)
    stopped = launch(1)
    client("ec2").stop_instances(InstanceIds=stopped)
    launch(1, tags={})
    launch(1, tags={"service": "chat", "stage": "staging"})
    slug = make_slug(tmp_path)

    fleet = make_fleet(tmp_path)
    sent = capture_sends(fleet)
    fleet.publish(release(7, slug))

    [command] = sent
    assert sorted(command["InstanceIds"]) == chosen
    assert command["DocumentName"] == "AWS-RunShellScript"
    assert (command["MaxConcurrency"], command["MaxErrors"]) == ("100%", "100%")
    key = f"slugs/{slug.id}.tar.gz"
    assert command["Parameters"]["commands"] == [
        f"ship agent deploy --release 'us#7' --number 7 --sha a1b2c3d --slug s3://slugs/{key} "
        f"--slug-id {slug.id} --stagger 120"]
    assert command["Parameters"]["executionTimeout"] == ["3900"]
    assert client("s3").get_object(Bucket="slugs", Key=key)["Body"].read() == b"release bytes"


def test_a_slug_is_uploaded_once_per_digest(aws, tmp_path: Path) -> None:
    launch(2)
    slug = make_slug(tmp_path)
    make_fleet(tmp_path).publish(release(1, slug))
    key = f"slugs/{slug.id}.tar.gz"
    s3 = client("s3")
    stored = hashlib.sha256(Path(slug.uri.removeprefix("file://")).read_bytes()).hexdigest()
    assert s3.head_object(Bucket="slugs", Key=key)["Metadata"] == {"slug-id": slug.id,
                                                                    "sha256": stored}
    s3.put_object(Bucket="slugs", Key=key, Body=b"already there")

    # A fresh driver (no memory of the upload) finds the digest in the bucket.
    fresh = make_fleet(tmp_path)
    fresh.publish(release(2, slug))
    assert s3.get_object(Bucket="slugs", Key=key)["Body"].read() == b"already there"

    fresh.publish(release(3, make_slug(tmp_path, b"other bytes")))
    assert s3.list_objects_v2(Bucket="slugs")["KeyCount"] == 2


def test_a_slug_already_in_s3_is_shipped_where_it_is(aws, tmp_path: Path) -> None:
    launch(1)
    slug = Slug(id="sha256-0123456789abcdef", uri="s3://builds/chat/0123.tar.gz")

    fleet = make_fleet(tmp_path)
    sent = capture_sends(fleet)
    fleet.publish(release(4, slug))

    assert "--slug s3://builds/chat/0123.tar.gz" in sent[0]["Parameters"]["commands"][0]
    assert client("s3").list_objects_v2(Bucket="slugs")["KeyCount"] == 0


def test_nothing_to_ship_or_nowhere_to_ship_it_fails_the_publish(aws, tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    sent = capture_sends(fleet)
    with pytest.raises(FleetError, match="no running instance"):
        fleet.publish(release(1, make_slug(tmp_path)))
    launch(1)
    with pytest.raises(FleetError, match="neither a file nor in S3"):
        fleet.publish(release(1, Slug(id="sha256-0", uri="sim://slugs/0")))
    with pytest.raises(FleetError, match="no slug"):
        fleet.publish(release(1, None))
    assert sent == []


def test_the_command_template_is_configurable_and_quoted(aws, tmp_path: Path) -> None:
    launch(1)
    template = ("sudo -u app /opt/ship/bin/ship agent deploy --release {release} "
                "--slug {slug_id} --keep {keep_releases} --drain {drain_timeout} -- {sha}")
    fleet = make_fleet(tmp_path, command=template)
    sent = capture_sends(fleet)

    fleet.publish(release(9, Slug(id="sha256-ab", uri="s3://b/k")))

    assert sent[0]["Parameters"]["commands"] == [
        "sudo -u app /opt/ship/bin/ship agent deploy --release 'us#9' --slug sha256-ab "
        "--keep 5 --drain 30 -- a1b2c3d"]


def test_the_default_command_is_one_the_agent_takes(tmp_path: Path) -> None:
    from rollout.agent import parse_deploy_args

    fleet = make_fleet(tmp_path, stagger=90)
    slug = Slug(id="sha256-0123456789abcdef", uri="s3://b/k")
    argv = shlex.split(fleet.script(release(12, slug), slug, "s3://b/chat/x.tar.gz"))

    assert argv[:3] == ["ship", "agent", "deploy"]
    options = parse_deploy_args(argv[3:])
    assert (options.release, options.number, options.sha, options.slug, options.slug_id,
            options.stagger) == ("us#12", 12, "a1b2c3d", "s3://b/chat/x.tar.gz", slug.id, 90)


def test_config_shape_and_mistakes() -> None:
    config = AwsFleetConfig.model_validate(yaml.safe_load(textwrap.dedent("""
        driver: aws
        region: eu-west-1
        tags: {service: chat, stage: prod}
        slugs: {bucket: ship-slugs, prefix: chat/}
        command: "ship agent deploy --release {release} --slug {slug} --stagger {stagger}"
        delivery_timeout: 10m
        elb:
          target_groups: ["arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/chat/1"]
          healthy_timeout: 3m
    """)))
    assert config.delivery_timeout == 600 and config.elb and config.elb.healthy_timeout == 180
    base = {"driver": "aws", "tags": TAGS, "slugs": {"bucket": "slugs"}}
    with pytest.raises(ValidationError, match="unknown placeholder"):
        AwsFleetConfig.model_validate(base | {"command": "ship agent deploy {relase}"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        AwsFleetConfig.model_validate(base | {"aws_secret_access_key": "x"})
    with pytest.raises(ValidationError, match="tags"):
        AwsFleetConfig.model_validate(base | {"tags": {}})


# --- read-back -----------------------------------------------------------------------------


def test_invocation_states_map_to_waiting_started_converged_failed(aws, tmp_path: Path) -> None:
    pending, delayed, running, _done, failed, timed_out, cancelled = launch(7)
    fleet = make_fleet(tmp_path)
    fleet.publish(release(3, make_slug(tmp_path)))
    set_invocation(pending, "Pending")
    set_invocation(delayed, "Delayed")
    set_invocation(running, "InProgress")
    set_invocation(failed, "Failed", stderr="unpacking slug\nslug digest mismatch\n", code=3)
    set_invocation(timed_out, "TimedOut", "ExecutionTimedOut")
    set_invocation(cancelled, "Cancelled")

    status = fleet.observe()

    assert (status.hosts, status.started, status.converged, status.failed) == (7, 2, 1, 3)
    assert set(status.failures) == {
        HostFailure(failed, "Failed (exit 3): slug digest mismatch"),
        HostFailure(timed_out, "ExecutionTimedOut"),
        HostFailure(cancelled, "Cancelled"),
    }
    assert not status.all_started and not status.done
    assert status.first_request_at is not None and status.half_at is None

    for instance in (pending, delayed, running):
        set_invocation(instance, "Success", code=0)
    status = fleet.observe()

    assert (status.started, status.converged, status.failed) == (4, 4, 3)
    assert status.all_started and status.done
    assert status.half_at is not None and status.converged_at is not None
    assert status.p95_at is None  # 3 of 7 hosts failed: 95% never converge


def test_commands_go_out_in_batches_and_only_news_is_read_back(aws, tmp_path: Path) -> None:
    instances = launch(60)
    fleet = make_fleet(tmp_path)
    sent = capture_sends(fleet)
    fleet.publish(release(1, make_slug(tmp_path)))
    assert [len(c["InstanceIds"]) for c in sent] == [50, 10]  # the API's limit is 50
    assert sorted(i for c in sent for i in c["InstanceIds"]) == instances
    slow = sent[0]["InstanceIds"][0]
    set_invocation(slow, "InProgress")
    reads = count_calls(fleet, "GetCommandInvocation")
    lists = count_calls(fleet, "ListCommands")

    assert fleet.observe().converged == 59
    assert (len(reads), len(lists)) == (60, 2)  # first look: every host

    reads.clear(), lists.clear()
    assert fleet.observe().converged == 59
    assert (len(reads), len(lists)) == (0, 1)  # nothing new; the finished command is not asked

    set_invocation(slow, "Success", code=0)
    reads.clear(), lists.clear()
    status = fleet.observe()
    assert (len(reads), len(lists)) == (1, 1)
    assert (status.hosts, status.converged, status.done) == (60, 60, True)
    assert status.first_request_at and status.half_at and status.p95_at and status.converged_at

    reads.clear(), lists.clear()
    assert fleet.observe().converged == len(instances)
    assert (len(reads), len(lists)) == (0, 0)


def test_a_host_without_invocation_waits_then_fails(aws, tmp_path: Path) -> None:
    [lost] = launch(1)
    clock = ManualClock()
    fleet = make_fleet(tmp_path, clock)
    fleet.publish(release(1, make_slug(tmp_path)))
    command = ssm_backends[DEFAULT_ACCOUNT_ID][REGION]._commands[0]
    command.invocations.clear()  # SSM has not registered the invocation yet

    status = fleet.observe()
    assert (status.started, status.converged, status.failed, status.done) == (0, 0, 0, False)

    clock.sleep(600 + 61)  # past the delivery timeout and its grace
    status = fleet.observe()
    assert status.failed == 1 and status.done
    assert status.failures[0].host == lost and "no invocation" in status.failures[0].reason


def test_a_restarted_orchestrator_goes_on_observing(aws, tmp_path: Path) -> None:
    instances = launch(3)
    make_fleet(tmp_path).publish(release(5, make_slug(tmp_path)))
    set_invocation(instances[0], "Failed", stderr="boom")

    status = make_fleet(tmp_path).observe()

    assert (status.release, status.hosts, status.converged, status.failed) == (5, 3, 2, 1)


def test_observe_before_publish_counts_the_fleet(aws, tmp_path: Path) -> None:
    launch(4)
    status = make_fleet(tmp_path).observe()
    assert (status.release, status.hosts, status.done) == (None, 4, False)


def test_superseded_commands_are_cancelled_and_unmanaged_hosts_fail_alone(
        tmp_path: Path) -> None:
    # moto implements neither CancelCommand nor SendCommand's InvalidInstanceId: here a
    # scripted endpoint answers as EC2 and SSM document them.
    instances = ["i-0bad", "i-0good1", "i-0good2"]
    sent: list[list[str]] = []
    cancelled: list[str] = []

    def answer(request: Request) -> Reply:
        target = request.headers.get("x-amz-target", "")
        if not target:  # EC2's query protocol: DescribeInstances
            items = "".join(f"<item><instanceId>{i}</instanceId></item>" for i in instances)
            return Reply(body=f"<DescribeInstancesResponse><reservationSet><item><instancesSet>"
                              f"{items}</instancesSet></item></reservationSet>"
                              f"</DescribeInstancesResponse>", headers={"Content-Type": "text/xml"})
        body = request.json()
        if target.endswith("SendCommand"):
            if "i-0bad" in body["InstanceIds"]:
                return Reply(400, json={"__type": "InvalidInstanceId", "message": "not managed"})
            sent.append(body["InstanceIds"])
            return Reply(json={"Command": {"CommandId": f"{len(sent):036d}"}})
        if target.endswith("ListCommands"):
            return Reply(json={"Commands": [{"CommandId": body["CommandId"], "Status": "InProgress",
                                             "TargetCount": 1, "CompletedCount": 0}]})
        if target.endswith("GetCommandInvocation"):
            return Reply(json={"Status": "InProgress", "StatusDetails": "InProgress",
                               "ExecutionStartDateTime": "2026-11-30T12:00:00.5Z"})
        cancelled.append(body["CommandId"])
        return Reply(json={})

    with FakeServer() as aws_api:
        aws_api.route("POST", "/", answer)
        fleet = make_fleet(tmp_path, endpoint_url=aws_api.url)
        fleet.publish(release(1, Slug(id="sha256-1", uri="s3://builds/1.tar.gz")))
        status = fleet.observe()

        assert sent == [["i-0good1"], ["i-0good2"]]
        assert (status.hosts, status.started, status.failed) == (3, 2, 1)
        assert status.failures == (
            HostFailure("i-0bad", "SSM did not take the command: InvalidInstanceId"),)

        fleet.publish(release(2, Slug(id="sha256-2", uri="s3://builds/2.tar.gz")))
        assert cancelled == [f"{1:036d}", f"{2:036d}"]  # release 1's waiting hosts stop


# --- ELBv2 around the restart ---------------------------------------------------------------


def target_groups(endpoint_url: str | None = None) -> tuple[str, str, str]:
    """A subnet and two target groups on port 8080 with a 30 s deregistration delay."""
    ec2, elbv2 = client("ec2", endpoint_url), client("elbv2", endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    arns = []
    for name in ("chat", "chat-admin"):
        group = elbv2.create_target_group(Name=name, Protocol="HTTP", Port=8080, VpcId=vpc,
                                          TargetType="instance")["TargetGroups"][0]
        elbv2.modify_target_group_attributes(
            TargetGroupArn=group["TargetGroupArn"],
            Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}])
        arns.append(group["TargetGroupArn"])
    return subnet, arns[0], arns[1]


def state(elbv2, group: str, instance: str) -> str:  # elbv2: a boto3 client
    health = elbv2.describe_target_health(TargetGroupArn=group,
                                          Targets=[{"Id": instance, "Port": 8080}])
    return health["TargetHealthDescriptions"][0]["TargetHealth"]["State"]


@pytest.mark.parametrize("exit_code", [0, 3])
def test_elb_cycle_leaves_the_groups_only_around_the_restart(aws, exit_code: int) -> None:
    subnet, chat, admin = target_groups()
    [host] = launch(1, subnet=subnet)
    elbv2 = client("elbv2")
    elbv2.register_targets(TargetGroupArn=chat, Targets=[{"Id": host, "Port": 8080}])
    during: list[str] = []

    def restart() -> int:
        during.extend([state(elbv2, chat, host), state(elbv2, admin, host)])
        return exit_code

    code = elb_cycle(elbv2, host, [chat, admin], restart, poll=0.01)

    assert code == exit_code
    assert during == ["unused", "unused"]
    assert state(elbv2, chat, host) == "healthy"  # back, even after a failed restart
    assert state(elbv2, admin, host) == "unused"  # never was in it: left alone


def test_a_host_the_group_cannot_take_back_fails(aws, capsys: pytest.CaptureFixture) -> None:
    subnet, chat, _ = target_groups()
    [host] = launch(1, subnet=subnet)
    elbv2 = client("elbv2")
    elbv2.register_targets(TargetGroupArn=chat, Targets=[{"Id": host, "Port": 8080}])

    def restart_and_die() -> int:
        client("ec2").stop_instances(InstanceIds=[host])
        return 0

    code = elb_cycle(elbv2, host, [chat], restart_and_die, healthy_timeout=0.2, poll=0.05)

    assert code == 1
    assert f"could not rejoin {chat}" in capsys.readouterr().err


def test_draining_is_waited_for_within_a_bound(aws, capsys: pytest.CaptureFixture) -> None:
    # moto drains only the targets of terminated instances (and forever): enough to see
    # the wait poll while a target drains and give up at its bound.
    subnet, chat, _ = target_groups()
    [host] = launch(1, subnet=subnet)
    elbv2 = client("elbv2")
    elbv2.register_targets(TargetGroupArn=chat, Targets=[{"Id": host, "Port": 8080}])
    client("ec2").terminate_instances(InstanceIds=[host])
    member = _membership(elbv2, chat, host, None)
    assert member is not None and member.delay == 30  # the group's deregistration delay
    looks: list[str] = []
    elbv2.meta.events.register("before-call.elastic-load-balancing-v2.DescribeTargetHealth",
                               lambda **_kwargs: looks.append("look"))

    _wait_drained(elbv2, [member], drain_wait=0.2, poll=0.05)

    assert len(looks) >= 2
    assert "still draining" in capsys.readouterr().err


def test_elb_cycle_does_not_restart_a_host_it_could_not_take_out(aws) -> None:
    subnet, chat, _ = target_groups()
    [host] = launch(1, subnet=subnet)
    elbv2 = client("elbv2")
    elbv2.register_targets(TargetGroupArn=chat, Targets=[{"Id": host, "Port": 8080}])
    missing = chat.replace("targetgroup/chat/", "targetgroup/gone/")
    restarts: list[int] = []

    code = elb_cycle(elbv2, host, [chat, missing], lambda: restarts.append(1) or 0, poll=0.01)

    assert code == 1 and restarts == []
    assert state(elbv2, chat, host) == "healthy"  # what it had left, it joined again


def test_instance_identity_comes_from_imdsv2(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as imds:
        imds.route("PUT", "/latest/api/token", Reply(body="token-1"))
        imds.route("GET", "/latest/meta-data/instance-id",
                   lambda r: Reply(body="i-0abc\n") if r.headers.get(
                       "x-aws-ec2-metadata-token") == "token-1" else Reply(status=401))
        monkeypatch.delenv("AWS_SSM_INSTANCE_ID", raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)

        assert instance_identity() == "i-0abc"
        assert instance_identity("i-given") == "i-given"
        monkeypatch.setenv("AWS_SSM_INSTANCE_ID", "i-from-ssm")
        assert instance_identity() == "i-from-ssm"


# --- the published command, run as a host would run it --------------------------------------


@pytest.fixture(scope="module")
def moto_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"),
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


AGENT = """
import sys, boto3
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
elbv2, s3 = boto3.client("elbv2"), boto3.client("s3")
health = elbv2.describe_target_health(TargetGroupArn=args["--group"],
                                      Targets=[{"Id": args["--host"], "Port": 8080}])
bucket, key = args["--slug"][len("s3://"):].split("/", 1)
seen = (health["TargetHealthDescriptions"][0]["TargetHealth"]["State"],
        s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode(), args["--stagger"])
open(args["--report"], "w").write(repr(seen))
"""


def test_the_published_command_runs_the_agent_outside_the_target_group(
        moto_server: str, tmp_path: Path) -> None:
    requests.post(f"{moto_server}/moto-api/reset", timeout=5)
    client("s3", moto_server).create_bucket(Bucket="slugs")
    subnet, chat, _ = target_groups(moto_server)
    [host] = launch(1, subnet=subnet, endpoint_url=moto_server)
    elbv2 = client("elbv2", moto_server)
    elbv2.register_targets(TargetGroupArn=chat, Targets=[{"Id": host, "Port": 8080}])
    (tmp_path / "agent.py").write_text(AGENT)
    report = tmp_path / "report"
    template = (f"{sys.executable} {tmp_path / 'agent.py'} --slug {{slug}} --stagger {{stagger}} "
                f"--host {host} --report {report} --group {chat}")
    wrapper = f"{sys.executable} -W ignore::RuntimeWarning -m rollout.aws"
    fleet = make_fleet(tmp_path, stagger=0.2, endpoint_url=moto_server, command=template,
                       elb={"target_groups": [chat], "command": wrapper})

    sent = capture_sends(fleet)
    fleet.publish(release(2, make_slug(tmp_path, b"slug for the host")))
    [script] = sent[0]["Parameters"]["commands"]
    host_env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL": moto_server, "PYTHONPATH": str(ROOT),
                "AWS_DEFAULT_REGION": REGION, "AWS_SSM_INSTANCE_ID": host}
    done = subprocess.run(["/bin/sh", "-c", script], env=host_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    # Out of the group while the agent ran, the slug readable from S3, no second stagger.
    assert report.read_text() == repr(("unused", "slug for the host", "0"))
    assert state(elbv2, chat, host) == "healthy"
