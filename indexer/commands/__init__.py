"""One module per verb; each exposes `register(subcommands)` and sets `run` on its parser."""

from types import ModuleType

from indexer.commands import (
    add_images,
    bank,
    entries,
    entries_find,
    evaluate,
    exchange,
    hash_files,
    import_list,
    match,
    publish,
    stats,
    store,
)

COMMANDS: tuple[ModuleType, ...] = (
    bank, import_list, add_images, entries, entries_find, publish, stats, store, hash_files,
    match, evaluate, exchange,
)
