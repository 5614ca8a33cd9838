"""Result files: one self-describing HDF5 file per result, with provenance; `la.load` reads any
of them back; one writer per file (`locks`); atomic writes (`atomic`).

Writers that build a result file themselves (resumable surfaces, saved directions) use the
public pieces of its format: :func:`stamp` (kind and provenance), :func:`write_point` /
:func:`read_point` (a point as a group), :func:`write_attrs` / :func:`read_attrs` and
:func:`jsonable` (JSON attributes), and :func:`lossatlas.store.atomic.h5_file` (write beside,
then replace)."""

from lossatlas.store import atomic
from lossatlas.store.encoding import (
    is_tensor_map,
    json_safe,
    jsonable,
    read_attrs,
    read_point,
    stamp,
    write_attrs,
    write_point,
)
from lossatlas.store.results import (
    KIND_MODULES,
    check_folder,
    check_output,
    load,
    open_h5,
    open_regular,
    read_state_dict,
    register_loader,
    result,
    save,
)

__all__ = ["KIND_MODULES", "atomic", "check_folder", "check_output", "is_tensor_map", "json_safe",
           "jsonable", "load", "open_h5", "open_regular", "read_attrs", "read_point",
           "read_state_dict", "register_loader", "result", "save", "stamp", "write_attrs",
           "write_point"]
