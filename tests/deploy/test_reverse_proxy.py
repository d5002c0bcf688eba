"""The nginx configuration in docs/receiver.md exposes the Customer.io receiver and nothing else.

No nginx runs here: the published block is parsed (directives, blocks, locations) and checked against the
receiver the plugin really mounts (its prefix, its route, its body limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from data_out.metrics.receiver import MAX_BODY_BYTES

DOC = Path(__file__).resolve().parents[2] / "docs" / "receiver.md"


@dataclass
class Block:
    name: str
    args: list[str]
    directives: list[list[str]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def values(self, name: str) -> list[list[str]]:
        return [d[1:] for d in self.directives if d[0] == name]

    def all_blocks(self) -> list[Block]:
        return [self, *(b for child in self.blocks for b in child.all_blocks())]


def parse(text: str) -> Block:
    """Enough of nginx's grammar for a configuration file: directives ``;``, blocks ``{ }``, quotes, comments."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))
    root = Block("main", [])
    stack, words = [root], []
    for token in tokens:
        if token == ";":
            stack[-1].directives.append(words)
            words = []
        elif token == "{":
            block = Block(words[0], words[1:])
            stack[-1].blocks.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token.strip('"'))
    assert len(stack) == 1 and not words, "unbalanced braces"
    return root


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit.lower()]


@pytest.fixture(scope="module")
def config() -> Block:
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "docs/receiver.md should show exactly one nginx configuration"
    return parse(blocks[0])


@pytest.fixture(scope="module")
def receiver_path() -> str:
    """The path the api-server serves the receiver at: the plugin's prefix and the app's POST route."""
    import data_out_plugin

    (mounted,) = [a for a in data_out_plugin.DataOutPlugin.fastapi_apps if a["url_prefix"] == "/data-out"]
    posts = [r.path for r in mounted["app"].routes if "POST" in getattr(r, "methods", set())]
    assert posts == ["/customerio"]
    return mounted["url_prefix"] + posts[0]


def test_only_the_receiver_path_is_proxied(config: Block, receiver_path: str) -> None:
    (server,) = [b for b in config.all_blocks() if b.name == "server"]
    locations = {" ".join(b.args): b for b in server.blocks if b.name == "location"}
    assert set(locations) == {f"= {receiver_path}", "/"}, "one exact location for the receiver, one catch-all"
    proxied = [b for b in config.all_blocks() if b.values("proxy_pass")]
    assert proxied == [locations[f"= {receiver_path}"]], "nothing but the receiver reaches the api-server"
    assert locations["/"].values("return") == [["404"]]


def test_the_upstream_path_is_fixed_and_points_at_the_api_server(config: Block, receiver_path: str) -> None:
    upstreams = {b.args[0]: b for b in config.all_blocks() if b.name == "upstream"}
    location = next(b for b in config.all_blocks() if b.args == ["=", receiver_path])
    ((target,),) = location.values("proxy_pass")
    m = re.fullmatch(r"http://([\w.-]+)(/.*)", target)
    assert m, f"proxy_pass {target} names no upstream path: the client's spelling of the URL would pass through"
    assert m[2] == receiver_path
    assert upstreams[m[1]].values("server")[0][0] == "airflow-apiserver:8080"  # the compose service


def test_the_receiver_location_takes_posts_within_the_receivers_body_limit(config: Block, receiver_path: str) -> None:
    location = next(b for b in config.all_blocks() if b.args == ["=", receiver_path])
    ((limit,),) = location.values("client_max_body_size")
    assert 0 < size_bytes(limit) <= MAX_BODY_BYTES
    (only,) = [b for b in location.blocks if b.name == "limit_except"]
    assert only.args == ["POST"] and only.values("deny") == [["all"]]
    assert location.values("limit_req"), "a rate limit in front of the receiver"
    (server,) = [b for b in config.all_blocks() if b.name == "server"]
    assert any("ssl" in args for args in server.values("listen")), "Customer.io should reach it over TLS"
