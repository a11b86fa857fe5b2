"""The lookup API's OpenAPI 3.0 document, served at ``/openapi.json`` and fuzzed in the tests."""

from __future__ import annotations

from typing import Any

from stream.api.openapi_recommendations import RECOMMENDATION_SCHEMA, recommendation_paths
from stream.api.vector_format import VECTORS_MEDIA_TYPE
from stream.ingest.events import MAX_ID_LENGTH

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
_EMBEDDING = {
    "type": "object",
    "required": ["kind", "id", "version", "vector", "updated_at", "source"],
    "properties": {
        "kind": {"type": "string", "enum": ["user", "item"]},
        "id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "vector": {"type": "array", "items": {"type": "number"}},
        "updated_at": {"type": "integer", "description": "write time, epoch milliseconds"},
        "source": {"type": "string", "enum": ["native", "aligned"]},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_KIND = {
    "name": "kind",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": ["user", "item"]},
}
_VERSION = {
    "name": "version",
    "in": "query",
    "required": False,
    "description": "an exact version; older than the serving one may be carried back by aligners",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
}
_COMMON_ERRORS = {
    "400": _error("bad kind, id, version, body or format"),
    "401": _error("a bearer token is configured and was not given"),
    "409": _error("the version asked for cannot be reached from the serving version"),
    "503": _error("no serving version yet"),
}


def openapi_document(max_batch_ids: int, max_body_bytes: int) -> dict[str, Any]:
    """The document for an API with these limits."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "embstream lookup API",
            "version": "1",
            "description": "Versioned embeddings by kind and id; reads never mix versions.",
        },
        "components": {
            "schemas": {"Error": _ERROR, "Embedding": _EMBEDDING, "Recommendation": RECOMMENDATION_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            **recommendation_paths(_error, _COMMON_ERRORS),
            "/v1/embeddings/{kind}/{id}": {
                "get": {
                    "operationId": "getEmbedding",
                    "parameters": [
                        _KIND,
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                        },
                        _VERSION,
                    ],
                    "responses": {
                        "200": {
                            "description": "the vector at the version asked for (default: serving)",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Embedding"}}
                            },
                        },
                        "404": _error("unknown id, or the id lacks that version"),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/embeddings/{kind}/batch": {
                "post": {
                    "operationId": "getEmbeddings",
                    "parameters": [
                        _KIND,
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["json", "binary"]},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "description": f"at most {max_body_bytes} bytes",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["ids"],
                                    "properties": {
                                        "ids": {
                                            "type": "array",
                                            "maxItems": max_batch_ids,
                                            "items": {
                                                "type": "string",
                                                "minLength": 1,
                                                "maxLength": MAX_ID_LENGTH,
                                            },
                                        },
                                        "version": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": 2**31 - 1,
                                            "nullable": True,
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one entry per id (null: nothing to give), all of one version",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["kind", "version", "results"],
                                        "properties": {
                                            "kind": {"type": "string"},
                                            "version": {"type": "integer"},
                                            "results": {
                                                "type": "array",
                                                "items": {
                                                    "allOf": [{"$ref": "#/components/schemas/Embedding"}],
                                                    "nullable": True,
                                                },
                                            },
                                        },
                                    }
                                },
                                VECTORS_MEDIA_TYPE: {
                                    "schema": {"type": "string", "format": "binary"},
                                },
                            },
                        },
                        "413": _error("body too large"),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/versions": {
                "get": {
                    "operationId": "getVersions",
                    "responses": {
                        "200": {
                            "description": "serving, active and registry versions, rollout, store counts",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["serving_version", "registry_versions", "store"],
                                        "properties": {
                                            "serving_version": {"type": "integer", "nullable": True},
                                            "active_encoder_version": {"type": "integer", "nullable": True},
                                            "registry_versions": {
                                                "type": "array",
                                                "items": {"type": "integer"},
                                            },
                                            "rollout": {"type": "object", "nullable": True},
                                            "store": {"type": "object"},
                                        },
                                    }
                                }
                            },
                        },
                        "401": _COMMON_ERRORS["401"],
                    },
                }
            },
            "/v1/admin/backup": {
                "post": {
                    "operationId": "backupStore",
                    "description": "A consistent copy of the store, written by the worker to a new directory",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["dir"],
                                    "properties": {"dir": {"type": "string", "minLength": 1}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "written",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _COMMON_ERRORS["400"],
                        "401": _COMMON_ERRORS["401"],
                        "409": _error("the directory exists, or the copy failed"),
                    },
                }
            },
            "/v1/status": {
                "get": {
                    "operationId": "getStatus",
                    "responses": {
                        "200": {
                            "description": "versions, rollout, events/s, freshness, dead letters, history",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["serving_version", "events_per_second", "history"],
                                        "properties": {
                                            "serving_version": {"type": "integer", "nullable": True},
                                            "staged_version": {"type": "integer", "nullable": True},
                                            "events_per_second": {"type": "number"},
                                            "events_consumed": {"type": "integer"},
                                            "dead_letters": {"type": "integer"},
                                            "freshness_ms": {"type": "object"},
                                            "history": {"type": "array", "items": {"type": "object"}},
                                        },
                                    }
                                }
                            },
                        },
                        "401": _COMMON_ERRORS["401"],
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "statusPage",
                    "security": [{}],
                    "responses": {
                        "200": {
                            "description": "the status page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [{}],
                    "responses": {
                        "200": {
                            "description": "alive",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "security": [{}],
                    "responses": {
                        code: {
                            "description": description,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ready", "reason"],
                                        "properties": {
                                            "ready": {"type": "boolean"},
                                            "reason": {"type": "string"},
                                        },
                                    }
                                }
                            },
                        }
                        for code, description in (
                            ("200", "this node answers for every id"),
                            ("503", "a scale-out worker still replaying the other workers' changelog"),
                        )
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _COMMON_ERRORS["401"],
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "this document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _COMMON_ERRORS["401"],
                    },
                }
            },
        },
    }
