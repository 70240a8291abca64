"""capture.session: the MLink session state machine, synchronously (no trio, no sockets).

Every admin state, logon verdict, ack and checkpoint match, snapshot phase and GoodNight; and a
property: no sequence of parsed control messages makes it raise or send the requests twice.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture import protocol
from capture import session as mlink
from capture.session import MLinkSession, SessionState

TYPES = ("OptionNbboQuote", "StockPrint")


def requests() -> tuple[protocol.StreamRequest, ...]:
    return tuple(
        protocol.StreamRequest(msg_name=t, query_id=1000 * (i + 1) + 1, stripe="A", label="x")
        for i, t in enumerate(TYPES)
    )


def fresh(deadline: float | None = 10.0) -> MLinkSession:
    return MLinkSession(requests(), logon_deadline=deadline)


def admin(state: str, detail: str | None = None) -> protocol.Admin:
    return protocol.Admin(state=state, detail=detail)


def ack(name: str | None, result: str = "OK", qid: int | None = None) -> protocol.StreamAck:
    return protocol.StreamAck(msg_name=name, result=result, detail=None, query_id=qid)


def cp(state: str, qid: int | None, hw: int | None = None) -> protocol.CheckPt:
    return protocol.CheckPt(
        state=state, query_id=qid, highwater_ts=hw, num_messages_sent=3, detail=None
    )


def kinds(events: list[mlink.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_logged_on_sends_the_requests_once_and_is_recorded() -> None:
    s = fresh()
    events = s.receive(admin("LoggedOn"))
    assert kinds(events) == ["LogonVerdict", "SendRequests"]
    send = events[1]
    assert isinstance(send, mlink.SendRequests) and send.requests == requests()
    assert send.reason == "logged_on"
    assert s.state is SessionState.LOGGED_ON and s.requested
    assert s.receive(admin("LoggedOn")) == []  # a repeat says nothing new
    assert s.deadline is None and s.tick(1e9) == []


def test_waiting_logon_asks_for_the_credential_then_logged_on_requests() -> None:
    for waiting in ("WaitingLogon", "waitingForLogon"):
        s = fresh()
        assert kinds(s.receive(admin(waiting))) == ["LogonVerdict", "SendLogon"]
        assert s.state is SessionState.AWAITING_LOGON and not s.requested
        assert kinds(s.receive(admin("LoggedOn"))) == ["LogonVerdict", "SendRequests"]


def test_the_credential_is_sent_once_however_often_the_server_asks() -> None:
    """A server repeating WaitingLogon (5,000 times in a probe) got one MLinkLogon each."""
    s = fresh()
    assert kinds(s.receive(admin("WaitingLogon"))) == ["LogonVerdict", "SendLogon"]
    for _ in range(5000):
        assert s.receive(admin("WaitingLogon")) == []
    assert s.state is SessionState.AWAITING_LOGON
    assert kinds(s.receive(admin("LoggedOn"))) == ["LogonVerdict", "SendRequests"]


def test_no_admin_at_all_requests_at_the_logon_deadline() -> None:
    s = fresh(deadline=10.0)
    assert s.deadline == 10.0
    assert s.tick(9.99) == []
    events = s.tick(10.0)
    assert kinds(events) == ["SendRequests"]
    assert isinstance(events[0], mlink.SendRequests) and events[0].reason == "logon_timeout"
    assert s.state is SessionState.REQUESTED and s.deadline is None
    assert s.tick(20.0) == []  # never twice
    # A LoggedOn after that confirms the session without sending the requests again.
    assert kinds(s.receive(admin("LoggedOn"))) == ["LogonVerdict"]
    assert s.state is SessionState.LOGGED_ON


def test_a_refused_logon_ends_the_session_as_an_auth_failure_even_after_requesting() -> None:
    for state in ("LogonFailed", "Refused", "None", "somethingNew"):
        for requested_first in (False, True):
            s = fresh()
            if requested_first:
                s.tick(10.0)
            events = s.receive(admin(state, "bad key"))
            assert kinds(events) == ["LogonVerdict", "EndSession"]
            end = events[1]
            assert isinstance(end, mlink.EndSession) and end.auth_failed
            assert end.reason == f"MLinkAdmin {state}: bad key"
            assert s.state is SessionState.ENDED
            assert s.receive(admin("LoggedOn")) == []  # ended is final


def test_good_night_ends_the_session_at_any_time_and_is_not_an_auth_failure() -> None:
    before, after = fresh(), fresh()
    after.receive(admin("LoggedOn"))
    for s, expected in ((before, ["LogonVerdict", "EndSession"]), (after, ["EndSession"])):
        events = s.receive(admin("GoodNight", "maintenance"))
        assert kinds(events) == expected
        end = events[-1]
        assert isinstance(end, mlink.EndSession) and not end.auth_failed
        assert "GoodNight (maintenance)" in end.reason
        assert s.state is SessionState.ENDED


def test_verdicts_after_logged_on_are_only_logged() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    events = s.receive(admin("LogonFailed", "late"))
    assert kinds(events) == ["AdminAfterLogon"]
    assert s.state is SessionState.LOGGED_ON


def test_acks_match_by_query_id_then_name_then_first_waiting() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    by_qid = s.receive(ack(None, qid=2001))
    assert by_qid == [mlink.StreamAcked("StockPrint", "OK", None, True)]
    by_name = s.receive(ack("optionnbboquote"))  # names match case-insensitively
    assert by_name == [mlink.StreamAcked("OptionNbboQuote", "OK", None, True)]
    assert kinds(s.receive(ack(None))) == ["UnmatchedAck"]  # nothing waits any more
    assert s.in_snapshot("OptionNbboQuote") and s.in_snapshot("StockPrint")


def test_an_ack_naming_a_type_not_requested_settles_no_stream() -> None:
    """A refusal of a type this session never asked for (another client's, or a lie) must not
    mark one of ours refused: it is unmatched, and our streams still wait for their acks."""
    s = fresh()
    s.receive(admin("LoggedOn"))
    for name in ("StockBookQuote", "", "OptionNbboQuoteX", "../x"):
        assert s.receive(ack(name, result="UnauthMsgType")) == [mlink.UnmatchedAck(name)]
    assert s.receive(ack("StockBookQuote", qid=999_999)) == [mlink.UnmatchedAck("StockBookQuote")]
    assert not any(st.acked for st in s.streams.values())
    # Our own names and queryIDs still match afterwards.
    assert kinds(s.receive(ack("stockprint"))) == ["StreamAcked"]
    acked = mlink.StreamAcked("OptionNbboQuote", "OK", None, True)
    assert s.receive(ack(None, qid=1001)) == [acked]


def test_a_type_number_falls_back_to_order_and_an_unknown_query_id_matches_nothing() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    assert s.receive(ack("2785")) == [mlink.StreamAcked("OptionNbboQuote", "OK", None, True)]
    assert s.receive(ack(None, qid=42)) == [mlink.UnmatchedAck(None)]
    # Renumbered by the server, but with our type's name: matched by the name.
    assert s.receive(ack("StockPrint", qid=42)) == [
        mlink.StreamAcked("StockPrint", "OK", None, True)
    ]


def test_a_checkpoint_for_a_query_not_ours_ends_nothing() -> None:
    """A reviewer's case: a Terminated for queryID 987654 ended the session (every session,
    if the server repeats it)."""
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", qid=1001))
    assert s.receive(cp("Terminated", 987654)) == []
    assert s.receive(cp("Active", 987654)) == []
    assert s.state is SessionState.LOGGED_ON and s.in_snapshot("OptionNbboQuote")


def test_checkpoint_states_match_in_any_case_and_actives_without_ids_go_in_turn() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack(None))
    s.receive(ack(None))
    first, second = s.receive(cp("ACTIVE", None)), s.receive(cp("active", None))
    assert [e.msg_type for e in first + second if isinstance(e, mlink.Checkpoint)] == [
        "OptionNbboQuote", "StockPrint"
    ]
    assert not s.in_snapshot("OptionNbboQuote") and not s.in_snapshot("StockPrint")
    assert kinds(s.receive(cp("terminated", 2001))) == ["Checkpoint", "EndSession"]


def test_an_ack_without_ids_goes_to_the_first_stream_still_waiting() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    assert s.receive(ack(None)) == [mlink.StreamAcked("OptionNbboQuote", "OK", None, True)]
    assert s.receive(ack(None)) == [mlink.StreamAcked("StockPrint", "OK", None, True)]


def test_a_refused_stream_is_not_in_snapshot_and_others_go_on() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    events = s.receive(ack("StockPrint", result="UnkwnMsgType"))
    assert events == [mlink.StreamAcked("StockPrint", "UnkwnMsgType", None, False)]
    assert not s.in_snapshot("StockPrint")
    assert s.streams["StockPrint"].failed == "UnkwnMsgType"
    for ok in ("OK", "Warn", "None"):
        assert protocol.StreamAck(None, ok, None, None).ok


def test_snapshot_phases_follow_checkpoints() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", qid=1001))
    assert s.in_snapshot("OptionNbboQuote")  # from the ack until Active/Complete
    begin = s.receive(cp("Begin", 1001))
    assert begin == [mlink.Checkpoint("OptionNbboQuote", "Begin", 3, None, "snapshot")]
    assert s.in_snapshot("OptionNbboQuote")
    active = s.receive(cp("Active", 1001, hw=123))
    assert active == [mlink.Checkpoint("OptionNbboQuote", "Active", 3, 123, "live")]
    assert not s.in_snapshot("OptionNbboQuote")
    replaced = s.receive(cp("Replaced", 1001))
    assert replaced[0] == mlink.Checkpoint("OptionNbboQuote", "Replaced", 3, None, "replaced")
    assert not s.in_snapshot("OptionNbboQuote")
    # Nothing more of the stream comes on this connection: the session ends (to reconnect).
    assert replaced[1:] == [
        mlink.EndSession("server ended the OptionNbboQuote stream (Replaced)", auth_failed=False)
    ]
    assert s.state is SessionState.ENDED


@pytest.mark.parametrize("state", ["Terminated", "Replaced"])
def test_a_stream_the_server_ends_ends_the_session_once(state: str) -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", qid=1001))
    s.receive(ack("StockPrint", qid=2001))
    ended = s.receive(protocol.CheckPt(state, 2001, None, None, "by operator"))
    assert kinds(ended) == ["Checkpoint", "EndSession"]
    end = ended[1]
    assert isinstance(end, mlink.EndSession) and not end.auth_failed
    assert end.reason == f"server ended the StockPrint stream ({state}: by operator)"
    # The other stream's end, on the closing connection, ends (and changes) nothing.
    assert s.receive(cp(state, 1001)) == []


def test_the_end_of_a_refused_stream_is_expected() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", result="UnkwnMsgType", qid=1001))
    assert kinds(s.receive(cp("Terminated", 1001))) == ["Checkpoint"]
    assert s.state is SessionState.LOGGED_ON


def test_checkpoints_without_query_id_go_to_the_stream_whose_phase_is_due() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack(None))
    s.receive(ack(None))
    first = s.receive(cp("Begin", None))
    second = s.receive(cp("Begin", None))  # the first already began: the next stream
    assert [e.msg_type for e in first + second if isinstance(e, mlink.Checkpoint)] == list(TYPES)
    s.receive(cp("Complete", None))
    assert s.receive(cp("Complete", None))[0] == mlink.Checkpoint(
        "StockPrint", "Complete", 3, None, "live"
    )
    assert s.receive(cp("Complete", None)) == []  # every stream completed: no target


def test_checkpoints_skip_refused_and_unacked_streams() -> None:
    s = fresh()
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", result="UnauthMsgType"))
    assert s.receive(cp("Begin", None)) == []  # StockPrint is not acked; OptionNbboQuote refused


def test_heartbeats_data_acks_and_other_control_traffic() -> None:
    s = fresh()
    assert s.receive(protocol.Heartbeat(seq_num=1, timestamp=None)) == [mlink.HeartbeatSeen()]
    assert s.receive(protocol.DataAck(result="Error", detail="x")) == [
        mlink.ServerProblem("Error", "x")
    ]
    assert s.receive(protocol.OtherControl("MLinkCount")) == []
    assert s.state is SessionState.AWAITING_LOGON


def test_a_replayed_session_has_no_timer_and_changes_state_the_same() -> None:
    s = mlink.replayed(requests())
    assert s.deadline is None and s.tick(1e12) == []
    s.receive(admin("LoggedOn"))
    s.receive(ack("StockPrint"))
    assert s.requested and s.in_snapshot("StockPrint")


_text = st.one_of(st.none(), st.text(max_size=12))
_int = st.one_of(st.none(), st.integers(-(2**70), 2**70))
_states = st.sampled_from(
    ["LoggedOn", "WaitingLogon", "GoodNight", "LogonFailed", "None", "Begin", "Active",
     "Complete", "Replaced", "Terminated", "", "loggedon"]
)
_controls = st.one_of(
    st.builds(protocol.Admin, state=_states, detail=_text),
    st.builds(
        protocol.StreamAck,
        msg_name=st.one_of(st.none(), st.sampled_from([*TYPES, "Other", "stockprint"])),
        result=st.sampled_from(["OK", "Warn", "None", "UnkwnMsgType", ""]),
        detail=_text,
        query_id=st.one_of(st.none(), st.sampled_from([1001, 2001, 7]), _int),
    ),
    st.builds(
        protocol.CheckPt,
        state=_states,
        query_id=st.one_of(st.none(), st.sampled_from([1001, 2001]), _int),
        highwater_ts=_int,
        num_messages_sent=_int,
        detail=_text,
    ),
    st.builds(protocol.Heartbeat, seq_num=_int, timestamp=_text),
    st.builds(protocol.DataAck, result=st.text(max_size=5), detail=_text),
    st.builds(protocol.OtherControl, mtyp=st.text(max_size=8)),
)


@given(st.lists(st.one_of(_controls, st.floats(0, 100)), max_size=40))
def test_no_sequence_of_control_messages_or_ticks_breaks_the_session(
    inputs: list[protocol.Control | float],
) -> None:
    s = fresh(deadline=50.0)
    sent = ended = 0
    for item in inputs:
        events = s.tick(item) if isinstance(item, float) else s.receive(item)
        sent += sum(isinstance(e, mlink.SendRequests) for e in events)
        ended += sum(isinstance(e, mlink.EndSession) for e in events)
        if s.state is SessionState.ENDED:
            assert not any(isinstance(e, mlink.SendRequests | mlink.SendLogon) for e in events)
    assert sent <= 1 and ended <= 1
    assert s.requested == (sent == 1)
    assert (s.state is SessionState.ENDED) == (ended == 1)


def test_replies_before_the_requests_or_after_the_end_change_nothing() -> None:
    """A second reviewer's case: a Terminated without ids before any request ended the
    session (a reconnect loop by another way); after GoodNight a Begin put a stream back in
    its snapshot."""
    s = fresh()
    assert s.receive(cp("Terminated", None)) == []
    assert s.receive(ack(None)) == [mlink.UnmatchedAck(None)]
    assert s.state is SessionState.AWAITING_LOGON and not s.requested
    s.receive(admin("LoggedOn"))
    s.receive(ack("OptionNbboQuote", qid=1001))
    s.receive(cp("Active", 1001))
    s.receive(admin("GoodNight"))
    assert s.receive(cp("Begin", 1001)) == [] and not s.in_snapshot("OptionNbboQuote")
    assert s.receive(ack("StockPrint", qid=2001)) == [mlink.UnmatchedAck("StockPrint")]

