"""The inbox list shows From, To and Cc exactly as the email package reads them.

The summary reads the common address shapes with a pattern of its own (the email
package's parser was most of the time the index spent per message); for every value,
simple or not, the list must show what the package's ``getaddresses`` gives.
"""

from __future__ import annotations

from email.utils import getaddresses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jdxmail.inbox.message import parse_summary

ATEXT = "abcxyzABZ019!#$%&'*+/=?^_`{|}~-"
atom = st.text(ATEXT, min_size=1, max_size=6)
dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
address = st.tuples(dot_atom, dot_atom).map("@".join)
words = st.lists(atom, min_size=1, max_size=3).flatmap(
    lambda parts: st.sampled_from([" ", "  ", "\t"]).map(lambda gap: gap.join(parts))
)
quoted = st.text(ATEXT + " ,.;:<>@()[]é", max_size=10).map(lambda text: f'"{text}"')
space = st.sampled_from(["", " ", "  "])
simple = st.one_of(
    st.tuples(space, address, space).map("".join),
    st.tuples(space, st.one_of(words, quoted, st.just("")), space, address, space).map(
        lambda p: f"{p[0]}{p[1]}{p[2]}<{p[3]}>{p[4]}"
    ),
)
# anything else a header may hold: lists, comments, group syntax, broken brackets
odd = st.text(ATEXT + ' ,.;:<>@()[]"\\\té', max_size=24)
values = st.lists(st.one_of(simple, simple.map(lambda v: f"{v}, {v}"), odd), max_size=3)


def shown_by_the_email_package(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw_name, addr in getaddresses(values):
        name = " ".join(raw_name.split())
        if addr or name:
            out.append(f"{name} <{addr}>" if name and addr else addr or name)
    return tuple(out)


@settings(max_examples=400, deadline=None)
@given(values)
@example(["App <app@example.com>"])
@example(['"Doe, John" <john@example.com>', "bob@localhost"])
@example(["first.last@example.com (Comment)"])
@example(["Undisclosed recipients:;"])
@example(["a..b@example.com", "<x@y>"])
def test_to_and_cc_are_listed_as_the_email_package_reads_them(values: list[str]) -> None:
    head = "".join(f"To: {v}\r\n" for v in values) + "Subject: s\r\n\r\n"
    summary = parse_summary(head.encode())
    # (a header's value is read without the white space around it)
    assert summary.to == shown_by_the_email_package([v.strip() for v in values])
