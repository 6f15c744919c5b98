"""The phone channel: voice gateways stream call audio to Kefu and Kefu talks back.

Wire codecs (``gateway_ws`` for Kefu's WebSocket protocol, ``audiosocket`` for Asterisk AudioSocket)
turn bytes into :mod:`~channels.telephony.events` and back; the call logic only sees events.
"""
