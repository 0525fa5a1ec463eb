"""The EC2 fleet (`driver: aws`): hosts are running instances found by their tags, slugs
live in S3, and every host is told at once through SSM Run Command to run the host
agent's deploy, which staggers its own start.

Orchestrator side (AwsFleet): publish uploads the slug once per content digest, cancels
what is left of the previous rollout and sends one command per 50 instances (the API's
limit). observe asks ListCommands once per unfinished command and GetCommandInvocation
only for hosts whose command has news, so an idle poll costs hosts/50 calls.

Host side (`python -m rollout.aws elb-cycle`): with `elb` configured, the command SSM runs
wraps the agent: wait the stagger, leave the target groups and wait for draining, run the
agent, join again and wait until healthy. Credentials come from the AWS credential chain
(instance profile, environment, profiles), never from config.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import Loader, create_loader
from pydantic import Field, field_validator

from rollout.sim import LISTED_FAILURES, quantile
from shiptypes import (
    FleetStatus,
    HostFailure,
    ProviderConfig,
    ProviderContext,
    ReleaseRef,
    RolloutSettings,
    Seconds,
    Slug,
    check_placeholders,
)

log = logging.getLogger("ship.rollout.aws")

SEND_LIMIT = 50  # instance ids per SendCommand call
DEFAULT_COMMAND = ("ship agent deploy --release {release} --number {number} --sha {sha} "
                   "--slug {slug} --slug-id {slug_id} --stagger {stagger}")
COMMAND_FIELDS = frozenset({"release", "number", "pipeline", "sha", "short_sha", "slug",
                            "slug_uri", "slug_id", "stagger", "drain_timeout", "keep_releases",
                            "app"})
WAITING = frozenset({"Pending", "Delayed"})
RUNNING = frozenset({"InProgress"})
FAILED = frozenset({"Failed", "Cancelled", "Cancelling", "TimedOut"})
MISSING_GRACE = 60.0  # seconds past the delivery timeout before a host with no invocation fails
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.zst", ".tar.xz", ".tgz", ".tar", ".zip")


class FleetError(RuntimeError):
    """A rollout could not be published at all: nothing was told to any host."""


# --- config ------------------------------------------------------------------------------


class SlugBucket(ProviderConfig):
    bucket: str = Field(min_length=3)
    prefix: str = Field("slugs/", description="key prefix; the key ends in the slug's digest")


class TargetGroups(ProviderConfig):
    """Take each host out of these ELBv2 target groups around its restart."""

    target_groups: list[str] = Field(min_length=1, description="target group ARNs")
    port: int | None = Field(None, ge=1, le=65535, description="default: each group's port")
    drain_wait: Seconds | None = Field(
        None, description="longest wait for draining; default: the group's deregistration delay")
    healthy_timeout: Seconds = Field(300.0, gt=0, description="wait for healthy after joining")
    command: str = Field("python3 -W ignore::RuntimeWarning -m rollout.aws",
                         description="runs this module on the host, where ship is installed")


class AwsFleetConfig(ProviderConfig):
    driver: Literal["aws"]
    region: str | None = Field(None, description="default: the pipeline's region")
    profile: str | None = Field(None, description="a named profile of the credential chain")
    endpoint_url: str | None = Field(None, description="another endpoint, e.g. for tests")
    tags: dict[str, str] = Field(min_length=1, description="tag filters that find the hosts")
    slugs: SlugBucket
    command: str = Field(DEFAULT_COMMAND, description="the agent's deploy command line")
    document: str = Field("AWS-RunShellScript",
                          description="an SSM document taking commands and executionTimeout")
    execution_timeout: Seconds = Field(
        3900.0, ge=1, le=172800, description="past the agent's own 1 h wait, which says why")
    delivery_timeout: Seconds = Field(600.0, ge=30, le=2592000)
    cancel_superseded: bool = Field(True, description="cancel the previous rollout's commands")
    api_concurrency: int = Field(8, ge=1, le=64, description="parallel status reads")
    elb: TargetGroups | None = None

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: str) -> str:
        return check_placeholders(command, COMMAND_FIELDS)

    def for_slot(self, slot: int) -> AwsFleetConfig:
        """The pre-prod of release slot `slot` (`train.in_flight`): the instances whose tags
        name it, `{slot}` in a tag value (`role: chat-preprod-{slot}`)."""
        tags = {key: value.replace("{slot}", str(slot)) for key, value in self.tags.items()}
        if slot and tags == self.tags:
            raise ValueError("a pre-prod per release needs a tag value naming the slot with "
                             f"{{slot}}, e.g. role: preprod-{{slot}} (tags are {self.tags})")
        return self.model_copy(update={"tags": tags})


# --- one rollout -------------------------------------------------------------------------


@dataclass
class _Host:
    instance: str
    command: str  # the SSM command id that carries this host's deploy
    status: str = "Pending"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "Success" or self.status in FAILED


@dataclass
class _Batch:
    command: str
    hosts: list[_Host]

    @property
    def finished(self) -> bool:
        return all(h.finished for h in self.hosts)

    def open(self) -> list[_Host]:
        return [h for h in self.hosts if not h.finished]


@dataclass
class _Run:
    release: int
    published_at: datetime
    batches: list[_Batch] = field(default_factory=list)
    unsent: list[_Host] = field(default_factory=list)  # failed before any command reached them

    def hosts(self) -> Iterator[_Host]:
        for batch in self.batches:
            yield from batch.hosts
        yield from self.unsent


# --- the driver --------------------------------------------------------------------------


class AwsFleet:
    """Implements FleetDriver for `driver: aws`."""

    def __init__(self, config: AwsFleetConfig, rollout: RolloutSettings,
                 context: ProviderContext) -> None:
        self.config = config
        self.rollout = rollout
        self.region = config.region or context.region
        self._clock = context.clock
        session = aws_session(config.profile, self.region, context.env)
        tuned = Config(retries={"mode": "standard", "max_attempts": 8},
                       max_pool_connections=config.api_concurrency + 2)
        self.ec2, self.s3, self.ssm = (
            session.client(name, endpoint_url=config.endpoint_url, config=tuned)
            for name in ("ec2", "s3", "ssm"))
        # Imported here: hosts run this module without the orchestrator's package set-up.
        from orchestrator.slugstore import S3SlugStore

        self._slugs = S3SlugStore(self.s3, config.slugs.bucket, config.slugs.prefix)
        self._stored: set[str] = set()  # slug names known to be in the bucket
        self._hosts_seen: int | None = None
        fleet_key = hashlib.sha256(json.dumps(config.tags, sort_keys=True).encode()).hexdigest()
        self._state_file = context.state_dir / f"aws-fleet-{context.pipeline}-{fleet_key[:8]}.json"
        self._run = self._load()

    # publish ----------------------------------------------------------------------------

    def publish(self, release: ReleaseRef) -> None:
        if release.slug is None:
            raise FleetError(f"{release.name} has no slug to ship")
        instances = self.discover()
        if not instances:
            raise FleetError(f"no running instance in {self.region} has tags {self.config.tags}")
        slug_uri = self.store_slug(release.slug)
        self._cancel_superseded()
        script = self.script(release, release.slug, slug_uri)
        comment = f"ship {release.name} {release.slug.id}"[:100]
        run = _Run(release.number, self._clock.now())
        for chunk in _chunks(instances, SEND_LIMIT):
            self._send(run, chunk, script, comment)
        if not run.batches:
            raise FleetError(f"SSM accepted no command: {run.unsent[0].reason}")
        self._run = run
        self._save()

    def discover(self) -> list[str]:
        """Running instances carrying every configured tag (stopped ones cannot deploy)."""
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in self.config.tags.items()]
        filters.append({"Name": "instance-state-name", "Values": ["running"]})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        instances = sorted(i["InstanceId"] for page in pages
                           for r in page["Reservations"] for i in r["Instances"])
        self._hosts_seen = len(instances)
        return instances

    def store_slug(self, slug: Slug) -> str:
        """The slug's S3 URI, uploading it unless an object with its digest is there."""
        if slug.uri.startswith("s3://"):
            return slug.uri
        source = _local_path(slug.uri)
        name = f"{slug.id}{_archive_suffix(source.name)}"
        if name not in self._stored and self._slugs.find(name) is None:
            self._slugs.put_file(name, source, metadata={"slug-id": slug.id})
            log.info("uploaded slug %s to %s", slug.id, self._slugs.uri(name))
        self._stored.add(name)
        return self._slugs.uri(name)

    def script(self, release: ReleaseRef, slug: Slug, slug_uri: str) -> str:
        """The shell command every host runs: the agent's deploy, wrapped by the target
        group cycle when `elb` is configured (the wrapper staggers, the agent then not)."""
        elb = self.config.elb
        values = {
            "release": release.name, "number": release.number, "pipeline": release.pipeline,
            "sha": release.sha, "short_sha": release.sha[:7], "slug": slug_uri,
            "slug_uri": slug_uri, "slug_id": slug.id,
            "stagger": 0 if elb else self.rollout.stagger,
            "drain_timeout": self.rollout.drain_timeout,
            "keep_releases": self.rollout.keep_releases,
            # The pipeline's `app:` as JSON ('' without one: the example app's protocol).
            "app": json.dumps(self.rollout.app) if self.rollout.app else "",
        }
        deploy = self.config.command.format(**{k: shlex.quote(_text(v)) for k, v in values.items()})
        if values["app"] and "{app}" not in self.config.command:
            deploy += f" --app {shlex.quote(values['app'])}"  # the agent's deploy takes it
        if elb is None:
            return deploy
        args = ["elb-cycle", "--region", self.region, "--stagger", _text(self.rollout.stagger),
                "--healthy-timeout", _text(elb.healthy_timeout)]
        if elb.drain_wait is not None:
            args += ["--drain-wait", _text(elb.drain_wait)]
        if elb.port is not None:
            args += ["--port", str(elb.port)]
        for arn in elb.target_groups:
            args += ["--target-group", arn]
        return " ".join([elb.command, *map(shlex.quote, args), "--run", shlex.quote(deploy)])

    def _send(self, run: _Run, instances: list[str], script: str, comment: str) -> None:
        """One SendCommand; an invalid instance (no SSM agent) fails only itself."""
        try:
            sent = self.ssm.send_command(
                InstanceIds=instances,
                DocumentName=self.config.document,
                Parameters={"commands": [script],
                            "executionTimeout": [str(int(self.config.execution_timeout))]},
                TimeoutSeconds=int(self.config.delivery_timeout),
                Comment=comment,
                MaxConcurrency="100%",  # the hosts stagger themselves; SSM's default is 50
                MaxErrors="100%",  # SSM's default 0 would stop telling hosts after one failure
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "InvalidInstanceId" and len(instances) > 1:
                for instance in instances:
                    self._send(run, [instance], script, comment)
                return
            reason = f"SSM did not take the command: {code or error}"
            run.unsent += [_Host(i, "", status="Failed", reason=reason,
                                 ended_at=self._clock.now()) for i in instances]
            return
        command = sent["Command"]["CommandId"]
        run.batches.append(_Batch(command, [_Host(i, command) for i in instances]))

    def _cancel_superseded(self) -> None:
        """Hosts still waiting out their stagger must not deploy the old release later."""
        run = self._run
        if run is None or not self.config.cancel_superseded:
            return
        for batch in run.batches:
            if batch.finished:
                continue
            try:
                summary = self.ssm.list_commands(CommandId=batch.command)["Commands"][0]
                if summary["Status"] in ("Pending", "InProgress"):
                    self.ssm.cancel_command(CommandId=batch.command)
            except (ClientError, BotoCoreError) as error:
                log.warning("could not cancel superseded command %s: %s", batch.command, error)

    # observe ----------------------------------------------------------------------------

    def observe(self) -> FleetStatus:
        run = self._run
        if run is None:
            hosts = self._hosts_seen if self._hosts_seen is not None else len(self.discover())
            return FleetStatus(release=None, hosts=hosts, started=0, converged=0, failed=0)
        self._refresh(run)
        return _status(run)

    def _refresh(self, run: _Run) -> None:
        """Read the hosts of every command that SSM counts fewer unfinished hosts in than
        we do (a read that lagged behind the count is simply repeated next time), and the
        hosts not yet seen to start."""
        now = self._clock.now()
        stale: list[_Host] = []
        for batch in run.batches:
            unfinished = batch.open()
            if not unfinished:
                continue
            summary = self.ssm.list_commands(CommandId=batch.command)["Commands"][0]
            news = summary["TargetCount"] - summary["CompletedCount"] < len(unfinished)
            stale += [h for h in unfinished if news or h.status in WAITING]
        answers: list[dict[str, Any] | None] = []
        if stale:
            with ThreadPoolExecutor(min(len(stale), self.config.api_concurrency)) as pool:
                answers = list(pool.map(self._invocation, stale))
        missing_after = self.config.delivery_timeout + MISSING_GRACE
        for host, answer in zip(stale, answers, strict=True):
            if answer is not None:
                _update(host, answer, now)
            elif (now - run.published_at).total_seconds() > missing_after:
                host.status, host.ended_at = "Failed", now
                host.reason = "SSM has no invocation of the deploy command for this host"

    def _invocation(self, host: _Host) -> dict[str, Any] | None:
        try:
            return self.ssm.get_command_invocation(CommandId=host.command,
                                                   InstanceId=host.instance)
        except ClientError as error:
            # Right after SendCommand an invocation may not exist yet: the host waits.
            if error.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                return None
            raise

    # state across orchestrator restarts --------------------------------------------------

    def _save(self) -> None:
        run = self._run
        assert run is not None
        record = {"release": run.release, "published_at": run.published_at.isoformat(),
                  "batches": [{"command": b.command, "hosts": [h.instance for h in b.hosts]}
                              for b in run.batches],
                  "unsent": [asdict(h) | {"ended_at": _iso(h.ended_at)} for h in run.unsent]}
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self._state_file)

    def _load(self) -> _Run | None:
        """The last rollout, so a restarted orchestrator goes on observing it."""
        try:
            record = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return None
        batches = [_Batch(b["command"], [_Host(i, b["command"]) for i in b["hosts"]])
                   for b in record["batches"]]
        unsent = [_Host(**(h | {"ended_at": _parse_time(h["ended_at"])}))
                  for h in record["unsent"]]
        return _Run(record["release"], datetime.fromisoformat(record["published_at"]),
                    batches, unsent)


def _update(host: _Host, invocation: Mapping[str, Any], now: datetime) -> None:
    host.status = invocation.get("Status", host.status)
    if host.status in WAITING:
        return
    host.started_at = _parse_time(invocation.get("ExecutionStartDateTime"), now)
    if host.finished:
        host.ended_at = _parse_time(invocation.get("ExecutionEndDateTime"), now)
        if host.status != "Success":
            host.reason = _reason(invocation)


def _reason(invocation: Mapping[str, Any]) -> str:
    """Why a host failed: SSM's status detail, the exit code and the output's last line."""
    detail = invocation.get("StatusDetails") or invocation.get("Status", "Failed")
    code = invocation.get("ResponseCode", -1)
    if code not in (None, -1):
        detail = f"{detail} (exit {code})"
    for output in (invocation.get("StandardErrorContent"), invocation.get("StandardOutputContent")):
        lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
        if lines:
            return f"{detail}: {lines[-1]}"[:300]
    return detail


def _status(run: _Run) -> FleetStatus:
    hosts = list(run.hosts())
    converged = sorted(h.ended_at or run.published_at for h in hosts if h.status == "Success")
    failed = [h for h in hosts if h.status in FAILED]
    started = sum(1 for h in hosts if h.status in RUNNING) + len(converged)
    all_started = started + len(failed) >= len(hosts)
    done = len(converged) + len(failed) >= len(hosts)
    return FleetStatus(
        release=run.release, hosts=len(hosts), started=started, converged=len(converged),
        failed=len(failed),
        failures=tuple(HostFailure(h.instance, h.reason) for h in failed[:LISTED_FAILURES]),
        first_request_at=converged[0] if converged else None,
        all_started_at=max(h.started_at or h.ended_at or run.published_at for h in hosts)
        if all_started else None,
        converged_at=max(h.ended_at or run.published_at for h in hosts) if done else None,
        half_at=quantile(converged, 0.5, len(hosts)),
        p95_at=quantile(converged, 0.95, len(hosts)),
    )


# --- helpers -----------------------------------------------------------------------------


@functools.cache
def _models() -> Loader:
    """One loader of botocore's service models for every session: they are large JSON
    files that each new session would parse again."""
    return create_loader()


def aws_session(profile: str | None, region: str, env: Mapping[str, str]) -> boto3.Session:
    """The credential chain; keys only ever from the pipeline's environment."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _models())
    return boto3.Session(
        botocore_session=core,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        profile_name=profile or env.get("AWS_PROFILE"),
        region_name=region,
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _local_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme:
        raise FleetError(f"cannot ship slug {uri!r} to EC2: it is neither a file nor in S3")
    return Path(uri)


def _archive_suffix(name: str) -> str:
    return next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), "")


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parse_time(text: str | None, ceiling: datetime | None = None) -> datetime | None:
    """SSM's ISO 8601 times (empty until the step happens), never later than `ceiling`."""
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if ceiling is not None and (moment is None or moment > ceiling):
        return ceiling
    return moment


# --- host side: leave the target groups around the restart --------------------------------


@dataclass(frozen=True)
class _Membership:
    group: str
    target: dict[str, Any]  # {"Id": instance, "Port": port}
    delay: float  # the group's deregistration delay


def elb_cycle(elbv2: Any, instance: str, groups: Sequence[str], restart: Callable[[], int], *,
              port: int | None = None, stagger: float = 0.0, drain_wait: float | None = None,
              healthy_timeout: float = 300.0, poll: float = 5.0) -> int:
    """Wait the stagger, leave every group this instance is in, wait for draining, restart,
    join again and wait until healthy. Returns the exit code: a restart never runs while
    the host is still in a group it could not leave."""
    time.sleep(random.random() * stagger)
    left: list[_Membership] = []
    try:
        for group in groups:
            member = _membership(elbv2, group, instance, port)
            if member is None:
                _say(f"{instance} is not in {group}: left alone")
                continue
            elbv2.deregister_targets(TargetGroupArn=group, Targets=[member.target])
            left.append(member)
        _wait_drained(elbv2, left, drain_wait, poll)
    except (ClientError, BotoCoreError) as error:
        _say(f"could not leave the target groups, not restarting: {error}")
        _join(elbv2, left, healthy_timeout, poll)
        return 1
    try:
        code = restart()
    finally:  # whatever the restart did, the host goes back where it was
        joined = _join(elbv2, left, healthy_timeout, poll)
    return code if code != 0 or joined else 1


def _membership(elbv2: Any, group: str, instance: str, port: int | None) -> _Membership | None:
    if port is None:
        port = elbv2.describe_target_groups(TargetGroupArns=[group])["TargetGroups"][0]["Port"]
    target = {"Id": instance, "Port": port}
    health = _health(elbv2, group, target)
    if health.get("Reason") == "Target.NotRegistered":
        return None
    attributes = elbv2.describe_target_group_attributes(TargetGroupArn=group)["Attributes"]
    delay = next((float(a["Value"]) for a in attributes
                  if a["Key"] == "deregistration_delay.timeout_seconds"), 300.0)
    return _Membership(group, target, delay)


def _wait_drained(elbv2: Any, left: list[_Membership], drain_wait: float | None,
                  poll: float) -> None:
    """ELB keeps a leaving target draining until its connections close or the group's
    deregistration delay ends; the agent's own drain covers whatever outlives the wait."""
    for member in left:
        deadline = time.monotonic() + (drain_wait if drain_wait is not None else member.delay + 5)
        while _health(elbv2, member.group, member.target).get("State") == "draining":
            if time.monotonic() >= deadline:
                _say(f"still draining from {member.group}; restarting anyway")
                break
            time.sleep(poll)


def _join(elbv2: Any, left: list[_Membership], timeout: float, poll: float) -> bool:
    """Register again wherever the host left; True once every group finds it healthy."""
    healthy = True
    for member in left:
        try:
            elbv2.register_targets(TargetGroupArn=member.group, Targets=[member.target])
        except (ClientError, BotoCoreError) as error:
            _say(f"could not rejoin {member.group}: {error}")
            healthy = False
    deadline = time.monotonic() + timeout
    for member in left:
        while True:
            health = _health(elbv2, member.group, member.target)
            if health.get("State") == "healthy" or health.get("Reason") == "Target.NotInUse":
                break
            if time.monotonic() >= deadline:
                _say(f"not healthy in {member.group} after {timeout:g}s: "
                     f"{health.get('State')} {health.get('Reason', '')}".rstrip())
                healthy = False
                break
            time.sleep(poll)
    return healthy


def _health(elbv2: Any, group: str, target: dict[str, Any]) -> dict[str, Any]:
    answer = elbv2.describe_target_health(TargetGroupArn=group, Targets=[target])
    descriptions = answer.get("TargetHealthDescriptions") or [{}]
    return descriptions[0].get("TargetHealth", {})


def instance_identity(explicit: str | None = None) -> str:
    """This host's instance id: given, from the SSM agent's environment, or from IMDSv2."""
    if explicit:
        return explicit
    if os.environ.get("AWS_SSM_INSTANCE_ID"):
        return os.environ["AWS_SSM_INSTANCE_ID"]
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254")
    base = base.rstrip("/")
    ask = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(ask, timeout=2) as answer:
        token = answer.read().decode()
    ask = urllib.request.Request(f"{base}/latest/meta-data/instance-id",
                                 headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(ask, timeout=2) as answer:
        return answer.read().decode().strip()


def _say(message: str) -> None:
    # SSM keeps the output: the last line becomes the host's failure reason.
    print(f"ship elb: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout.aws")
    commands = parser.add_subparsers(dest="action", required=True)
    cycle = commands.add_parser("elb-cycle", help="leave the target groups around a restart")
    cycle.add_argument("--region", required=True)
    cycle.add_argument("--target-group", action="append", required=True, dest="groups")
    cycle.add_argument("--run", required=True, help="the restart: a shell command")
    cycle.add_argument("--instance-id", help="default: from the SSM agent or IMDSv2")
    cycle.add_argument("--port", type=int)
    cycle.add_argument("--stagger", type=float, default=0.0)
    cycle.add_argument("--drain-wait", type=float)
    cycle.add_argument("--healthy-timeout", type=float, default=300.0)
    cycle.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args(argv)
    elbv2 = boto3.client("elbv2", region_name=args.region,
                         config=Config(retries={"mode": "standard", "max_attempts": 10}))
    return elb_cycle(elbv2, instance_identity(args.instance_id), args.groups,
                     lambda: subprocess.run(["/bin/sh", "-c", args.run], check=False).returncode,
                     port=args.port, stagger=args.stagger, drain_wait=args.drain_wait,
                     healthy_timeout=args.healthy_timeout, poll=args.poll)


if __name__ == "__main__":
    sys.exit(main())
