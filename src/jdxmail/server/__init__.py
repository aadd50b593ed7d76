"""The SMTP server behind ``jdxmail serve``.

``app`` runs it (start/serve/stop, signals), ``smtp`` speaks the protocol with one
client, ``policy`` decides who may relay and log in, ``auth`` checks passwords and
``tls`` makes the TLS contexts. Every reply text is in :mod:`jdxmail.replies`.
"""
