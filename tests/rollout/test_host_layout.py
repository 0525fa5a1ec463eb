"""A host's releases on disk (Capistrano's layout): the last N kept, older ones pruned,
`current` swapped atomically, and a rollback to a kept release unpacking nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests

from rollout.local import LocalFleet
from shiptypes import ReleaseRef, Slug
from tests.rollout.conftest import wait_done


def release_dir(release: ReleaseRef) -> str:
    assert release.slug
    return f"{release.number}-{release.slug.id}"


class LinkWatcher(threading.Thread):
    """Reads `current` as fast as it can: a swap that is not atomic shows up as a miss."""

    def __init__(self, link: Path) -> None:
        super().__init__(daemon=True)
        self.link = link
        self.seen: set[str] = set()
        self.misses = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.add(os.readlink(self.link))
            except OSError:
                self.misses += 1


def test_releases_are_kept_pruned_and_rolled_back_to_without_unpacking(
        local_fleet: Callable[..., LocalFleet], tarball_release: Callable[..., ReleaseRef]) -> None:
    fleet = local_fleet(hosts=1, workers=2, keep_releases=2, stagger=0.0)
    layout = fleet.hosts[0].layout
    one, two, three = tarball_release(1), tarball_release(2), tarball_release(3)
    fleet.publish(one)
    wait_done(fleet)
    watcher = LinkWatcher(layout.current_link)
    watcher.start()
    for each in (two, three):
        fleet.publish(each)
        wait_done(fleet)

    assert sorted(layout.kept()) == sorted([release_dir(two), release_dir(three)])
    assert os.readlink(layout.current_link) == f"releases/{release_dir(three)}"

    assert two.slug
    Path(url2pathname(urlsplit(two.slug.uri).path)).unlink()  # nothing left to download
    fleet.publish(two)
    rollback = wait_done(fleet)
    status = fleet.statuses()[0]
    page = requests.get(fleet.host_urls[0])

    assert (rollback.converged, rollback.failed) == (1, 0)
    assert status["unpacked"] is False
    assert page.headers["X-Release"] == "test#2"
    assert os.readlink(layout.current_link) == f"releases/{release_dir(two)}"

    fleet.publish(one)  # pruned: unpacked again from its slug
    wait_done(fleet)
    watcher.stop.set()
    watcher.join()

    assert fleet.statuses()[0]["unpacked"] is True
    assert sorted(layout.kept()) == sorted([release_dir(two), release_dir(one)])
    assert watcher.misses == 0
    assert watcher.seen == {f"releases/{release_dir(r)}" for r in (one, two, three)}


def test_a_slug_that_is_not_a_local_file_fails_the_host_with_the_reason(
        local_fleet: Callable[..., LocalFleet], tarball_release: Callable[..., ReleaseRef]) -> None:
    fleet = local_fleet(hosts=1, workers=1, stagger=0.0)
    good = tarball_release(1)
    assert good.slug
    elsewhere = ReleaseRef(2, "test", 2, "b" * 40, slug=Slug(
        id="sha256-0000000000000000", uri="s3://bucket/slugs/0000"))
    fleet.publish(good)
    wait_done(fleet)
    fleet.publish(elsewhere)
    status = wait_done(fleet)

    assert status.failed == 1
    assert "is not a local file" in status.failures[0].reason
    assert requests.get(fleet.host_urls[0]).headers["X-Release"] == "test#1"
