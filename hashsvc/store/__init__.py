"""The source of truth: banks and their entries (see `base` for the interface every backend
speaks and `open_store`, `model` for its types, `sqlite` for the embedded default and `postgres`
for a shared PostgreSQL database)."""

from hashsvc.store.base import BulkAdder, Store, is_postgres, open_store, redact
from hashsvc.store.listing import (
    EntryPage,
    EntryQuery,
    decode_page_token,
    encode_page_token,
)
from hashsvc.store.model import (
    BANK_KINDS,
    AddResult,
    Bank,
    BankKind,
    Entry,
    EntryRow,
    EntrySelector,
    NewEntry,
    StoreChanges,
    StoreStats,
    validate_name,
    validate_thresholds,
)
from hashsvc.store.sqlite import SqliteStore
from hashsvc.store.sqlite_schema import SCHEMA_VERSION

__all__ = [
    "BANK_KINDS", "SCHEMA_VERSION", "AddResult", "Bank", "BankKind", "BulkAdder", "Entry",
    "EntryPage", "EntryQuery", "EntryRow", "EntrySelector", "NewEntry", "SqliteStore", "Store",
    "StoreChanges", "StoreStats", "decode_page_token", "encode_page_token", "is_postgres",
    "open_store", "redact", "validate_name", "validate_thresholds",
]
