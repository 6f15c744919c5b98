"""The phone channel: voice gateways stream call audio to Kefu and Kefu talks back.

Wire codecs (``gateway_ws`` for Kefu's WebSocket protocol, ``audiosocket`` for Asterisk AudioSocket)
turn bytes into :mod:`~channels.telephony.events` and back; the call logic only sees events.
"""

from __future__ import annotations

from channels.base import Channel
from channels.telephony.adapter import PhoneHandOff, TelephonyAdapter
from channels.telephony.config import PhoneSettings
from channels.telephony.outbound import PhoneOutbound

# streams: the answer is spoken sentence by sentence while it is generated; cache_context off: a barge-in
# shortens a stored answer to what the caller heard, so the history is read from the database
descriptor = Channel(name="phone", adapter=TelephonyAdapter, outbound=PhoneOutbound, section=PhoneSettings,
                     handoff=PhoneHandOff, streams=True, cache_context=False)
