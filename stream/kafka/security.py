"""Kafka connection security (TLS, SASL) from settings, as each client library spells it.

Every Kafka client embstream creates (the worker's aiokafka consumer and producer, the
control plane's consumer, kafka-python's producer, admin and the swap command's clients)
gets its options from one :class:`KafkaSecurity`, so a secured cluster needs the settings
once. With the defaults (``PLAINTEXT``, nothing else) the clients get no extra options.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import KafkaSecurityError

__all__ = ["PROTOCOLS", "SASL_MECHANISMS", "KafkaSecurity", "KafkaSecurityError"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """``security.protocol`` and its SASL and TLS settings (names as in Kafka's own config)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"EMBSTREAM_KAFKA_SECURITY_PROTOCOL={self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                choices = ", ".join(SASL_MECHANISMS)
                raise KafkaSecurityError(
                    f"{self.protocol} needs EMBSTREAM_KAFKA_SASL_MECHANISM, one of {choices}"
                )
            if not self.sasl_username or not self.sasl_password:
                raise KafkaSecurityError(
                    f"{self.protocol} needs EMBSTREAM_KAFKA_SASL_USERNAME and EMBSTREAM_KAFKA_SASL_PASSWORD"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise KafkaSecurityError(
                "SASL settings are given but EMBSTREAM_KAFKA_SECURITY_PROTOCOL is "
                f"{self.protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if any(tls_files) and not self.uses_tls:
            raise KafkaSecurityError(
                f"TLS files are given but EMBSTREAM_KAFKA_SECURITY_PROTOCOL is {self.protocol}; "
                "use SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise KafkaSecurityError(
                "a client certificate needs both EMBSTREAM_KAFKA_SSL_CERTFILE and _KEYFILE"
            )

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def check_files(self) -> None:
        """Fail early, with the setting's name, on a TLS file that is not there."""
        for name, value in (
            ("EMBSTREAM_KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("EMBSTREAM_KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("EMBSTREAM_KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if value and not Path(value).is_file():
                raise KafkaSecurityError(f"{name}={value!r}: no such file")

    def _common(self) -> dict[str, Any]:
        """The protocol and SASL options, spelled the same by both client libraries."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options

    def kafka_python(self) -> dict[str, Any]:
        """Options for kafka-python's ``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``
        (TLS files by path)."""
        if self.protocol == "PLAINTEXT":
            return {}
        options = self._common()
        if self.uses_tls:
            files = (
                ("ssl_cafile", self.ssl_cafile),
                ("ssl_certfile", self.ssl_certfile),
                ("ssl_keyfile", self.ssl_keyfile),
            )
            options.update({name: value for name, value in files if value})
        return options

    def aiokafka(self) -> dict[str, Any]:
        """Options for aiokafka's ``AIOKafkaConsumer`` and ``AIOKafkaProducer`` (TLS through
        an ``ssl.SSLContext``, which aiokafka requires)."""
        if self.protocol == "PLAINTEXT":
            return {}
        options = self._common()
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: the CA file (else the system's), and a client certificate if given."""
        self.check_files()
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context
