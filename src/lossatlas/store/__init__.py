"""Result files: one self-describing HDF5 file per result, with provenance; `la.load` reads any
of them back; one writer per file (`locks`)."""

from lossatlas.store.results import (
    check_folder,
    check_output,
    load,
    open_h5,
    open_regular,
    read_attrs,
    read_state_dict,
    register_loader,
    result,
    save,
    write_attrs,
)

__all__ = ["check_folder", "check_output", "load", "open_h5", "open_regular", "read_attrs",
           "read_state_dict", "register_loader", "result", "save", "write_attrs"]
