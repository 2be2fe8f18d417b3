"""The source of truth: banks and their entries (see `model` for the types every backend speaks,
`sqlite` for the embedded default)."""

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
from hashsvc.store.sqlite import SCHEMA_VERSION, Store
from hashsvc.store.sqlite_bulk import BulkAdder

__all__ = [
    "BANK_KINDS", "SCHEMA_VERSION", "AddResult", "Bank", "BankKind", "BulkAdder", "Entry",
    "EntryRow", "EntrySelector", "NewEntry", "Store", "StoreChanges", "StoreStats",
    "validate_name", "validate_thresholds",
]
