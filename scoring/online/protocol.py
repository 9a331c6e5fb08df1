"""Online request bodies in, answers out: the Open Inference Protocol (V2, REST) and the
bodies MLflow's scoring server takes, so clients made for either work unchanged.

A request becomes `Rows`: the package's features in its order, each column typed as the
feature source types it (recorded at validation: `input_types`), text as Arrow dictionaries
as the batches hand them over, so a row scores the same online and in batch; and the rows'
entity ids, where they carry the feature table's id column. Whatever is wrong with a body
is a `BadRequest` naming the feature or the field, before any model sees it.
"""

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

# V2 datatypes as Arrow types; BYTES is text.
ARROW_TYPES = {
    "BOOL": pa.bool_(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BYTES": pa.string(),
}
NUMPY_TYPES = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# The header that says a V2 body is JSON followed by binary tensors (its JSON's length).
BINARY_HEADER = "inference-header-content-length"
OUTPUT = "score"


class BadRequest(Exception):
    """What is wrong with the request, for its sender; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Inputs:
    """What a model needs to read a request: its features, their types, the id column."""

    features: list[str]
    types: dict[str, str]  # feature: V2 datatype; a feature missing here takes what it gets
    id_column: str
    max_rows: int


@dataclass
class Rows:
    features: pa.Table
    entity_ids: list | None  # None: no row carried its id

    @property
    def count(self) -> int:
        return self.features.num_rows


# --- V2 -------------------------------------------------------------------------------


def parse_v2(body: bytes, header_length: str | None, inputs: Inputs) -> tuple[Rows, dict]:
    """The rows of a V2 infer request, and its JSON (for its id and parameters)."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{BINARY_HEADER} must be a number, got {header_length!r}") from None
        body, binary = body[:length], body[length:]
    request = load_json(body)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BadRequest('the body must be a JSON object with a list "inputs"')
    tensors = {}
    offset = 0
    for tensor in request["inputs"]:
        name, values, offset = v2_tensor(tensor, binary, offset)
        tensors[name] = values
    named = [name for name in tensors if name in inputs.features]
    if named or len(tensors) != 1:
        columns = {name: flat(values, name) for name, values in tensors.items()}
    else:  # one tensor [n, n_features]: the features in the package's order
        ((name, values),) = tensors.items()
        columns = matrix_columns(values, name, inputs)
        if inputs.id_column in tensors:
            columns[inputs.id_column] = flat(tensors[inputs.id_column], inputs.id_column)
    return rows_from_columns(columns, inputs), request


def v2_tensor(tensor: object, binary: bytes, offset: int) -> tuple[str, object, int]:
    """(name, its values (a list or an array), where the next binary tensor starts)."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest('each input must be an object with a "name"')
    name, datatype = tensor["name"], tensor.get("datatype")
    if datatype not in ARROW_TYPES:
        raise BadRequest(f"input {name!r}: datatype must be one of {', '.join(ARROW_TYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape must be a list of sizes")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise BadRequest(
                f"input {name!r}: the body holds fewer bytes than its binary_data_size"
            )
        values = binary_values(chunk, datatype, name)
        offset += size
    elif "data" in tensor:
        values = tensor["data"]
    else:
        raise BadRequest(f"input {name!r} has no data")
    # A matrix becomes numbers here; a feature's own column stays a list, typed by Arrow
    # with the others (typed_columns); FP16 Arrow cannot make from Python's floats.
    one_a_row = math.prod(shape[1:]) == 1
    if datatype != "BYTES" and isinstance(values, list) and (not one_a_row or datatype == "FP16"):
        values = numeric_array(values, datatype, name)
    if isinstance(values, np.ndarray):
        if values.size != math.prod(shape):
            raise BadRequest(f"input {name!r}: {values.size} values do not fill shape {shape}")
        values = values.reshape(shape)
    elif isinstance(values, list) and len(values) != math.prod(shape[:1]):
        raise BadRequest(f"input {name!r}: {len(values)} values do not fill shape {shape}")
    return name, values, offset


def binary_values(chunk: bytes, datatype: str, name: str):
    if datatype != "BYTES":
        try:
            return np.frombuffer(chunk, dtype=NUMPY_TYPES[datatype])
        except ValueError as exc:
            raise BadRequest(f"input {name!r}: {exc}") from None
    values, at = [], 0
    while at < len(chunk):  # each element: its length as 4 bytes, little-endian, then it
        (length,) = struct.unpack_from("<I", chunk, at)
        values.append(chunk[at + 4 : at + 4 + length].decode("utf-8", "replace"))
        at += 4 + length
    return values


def numeric_array(values: list, datatype: str, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=NUMPY_TYPES[datatype])
    except (TypeError, ValueError):
        raise BadRequest(f"input {name!r}: its data are not all {datatype} numbers") from None


def flat(values, name: str) -> list | np.ndarray:
    """A feature's column from its tensor: shape [n] or [n, 1]."""
    if isinstance(values, np.ndarray):
        if values.ndim > 1 and values.shape[1:] != (1,) * (values.ndim - 1):
            raise BadRequest(f"input {name!r}: shape {list(values.shape)} is not one value a row")
        return values.reshape(-1)
    if not isinstance(values, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    if values and isinstance(values[0], list):
        if any(not isinstance(v, list) or len(v) != 1 for v in values):
            raise BadRequest(f"input {name!r} is not one value a row")
        return [v[0] for v in values]
    return values


def matrix_columns(values, name: str, inputs: Inputs) -> dict:
    """The columns of one [n, n_features] tensor: numbers only, in the package's order."""
    count = len(inputs.features)
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[1] != count:
        raise BadRequest(
            f"input {name!r}: one tensor must have shape [rows, {count}] (the package's "
            f"features in order: {', '.join(inputs.features[:5])}{', ...' if count > 5 else ''}), "
            "or send one input per feature"
        )
    text = [f for f in inputs.features if inputs.types.get(f) == "BYTES"]
    if text:
        raise BadRequest(
            f"feature {text[0]!r} is text: send one input per feature (BYTES for text) with "
            '"parameters": {"content_type": "pd"}'
        )
    return {feature: values[:, i] for i, feature in enumerate(inputs.features)}


def v2_answer(name: str, version: int, request: dict, scores: list[float]) -> tuple[bytes, dict]:
    """The body of the answer and its headers: the scores as JSON data, or as raw bytes
    after the JSON where the request asks for binary outputs (tritonclient does)."""
    output = {"name": OUTPUT, "datatype": "FP64", "shape": [len(scores)]}
    answer = {"model_name": name, "model_version": str(version), "outputs": [output]}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    if not wants_binary(request):
        output["data"] = scores
        return orjson.dumps(answer), {}
    data = np.asarray(scores, dtype="<f8").tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(answer)
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def wants_binary(request: dict) -> bool:
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    outputs = request.get("outputs")
    return isinstance(outputs, list) and any(
        isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs
    )


def v2_metadata(name: str, version: int, inputs: Inputs) -> dict:
    return {
        "name": name,
        "versions": [str(version)],
        "platform": "dropscore",
        "inputs": [
            {"name": f, "datatype": inputs.types.get(f, "FP64"), "shape": [-1]}
            for f in inputs.features
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
        "parameters": {"id_column": inputs.id_column, "content_type": "pd"},
    }


# --- MLflow ---------------------------------------------------------------------------


def parse_mlflow(body: bytes, inputs: Inputs) -> Rows:
    """The rows of an MLflow scoring request: dataframe_records, dataframe_split, or
    instances / inputs (records, or lists of values in the package's feature order)."""
    request = load_json(body)
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    if "dataframe_records" in request:
        return rows_from_records(request["dataframe_records"], "dataframe_records", inputs)
    if "dataframe_split" in request:
        return rows_from_split(request["dataframe_split"], inputs)
    for key in ("instances", "inputs"):
        if key in request:
            values = request[key]
            if isinstance(values, list) and values and isinstance(values[0], list):
                return rows_from_columns(
                    matrix_columns(numeric_array(values, "FP64", key), key, inputs), inputs
                )
            return rows_from_records(values, key, inputs)
    raise BadRequest(
        "the body must hold one of dataframe_records, dataframe_split, instances or inputs"
    )


def rows_from_records(records: object, key: str, inputs: Inputs) -> Rows:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BadRequest(f"{key} must be a list of objects, one a row")
    check_count(len(records), inputs)
    names = [*inputs.features, inputs.id_column]
    columns = {name: [r.get(name) for r in records] for name in names if name in records[0]}
    missing = [f for f in inputs.features if any(f not in r for r in records)]
    if missing:
        raise missing_features(missing)
    return rows_from_columns(columns, inputs)


def rows_from_split(split: object, inputs: Inputs) -> Rows:
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
        raise BadRequest('dataframe_split must be an object with "columns" and "data"')
    data = split.get("data")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise BadRequest("dataframe_split's data must be a list of rows (lists)")
    width = len(split["columns"])
    if any(len(row) != width for row in data):
        raise BadRequest(f"every row of dataframe_split's data must hold {width} values")
    check_count(len(data), inputs)
    columns = {
        name: [row[i] for row in data]
        for i, name in enumerate(split["columns"])
        if name in inputs.features or name == inputs.id_column
    }
    return rows_from_columns(columns, inputs)


# --- both -----------------------------------------------------------------------------


def load_json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def check_count(rows: int, inputs: Inputs) -> None:
    if rows > inputs.max_rows:
        raise BadRequest(
            f"{rows} rows is more than the {inputs.max_rows} a request may hold", status=413
        )
    if rows == 0:
        raise BadRequest("the request holds no rows")


def missing_features(missing: list[str]) -> BadRequest:
    shown = ", ".join(missing[:20]) + (
        f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    )
    return BadRequest(f"missing {len(missing)} feature(s) the model needs: {shown}")


def rows_from_columns(columns: dict, inputs: Inputs) -> Rows:
    missing = [f for f in inputs.features if f not in columns]
    if missing:
        raise missing_features(missing)
    count = len(columns[inputs.features[0]])
    check_count(count, inputs)
    for name, values in columns.items():
        if len(values) != count:
            raise BadRequest(f"input {name!r} has {len(values)} rows, others {count}")
    arrays = typed_columns(columns, inputs)
    ids = columns.get(inputs.id_column)
    if ids is not None:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
    return Rows(pa.Table.from_arrays(arrays, names=inputs.features), ids)


def typed_columns(columns: dict, inputs: Inputs) -> list[pa.Array]:
    """The features' columns, typed as the batches would hand them to the model. The FP64
    features made of plain numbers come as one Arrow array cut into columns: Arrow's
    `array()` costs ~3 µs a call, most of a one-row request's parsing over 50 features.
    Anything else (text, nulls, a value that is not a number) goes column by column, which
    names the feature a bad value is in."""
    floats = [f for f in inputs.features if inputs.types.get(f) == "FP64"]
    typed = {}
    if len(floats) > 1:
        try:
            block = np.array([columns[f] for f in floats])
        except (ValueError, TypeError):  # ragged or odd values: column by column says where
            block = np.array([])
        if block.ndim == 2 and block.dtype.kind in "biuf":
            flat, count = pa.array(block.astype(np.float64, copy=False).ravel()), block.shape[1]
            typed = {f: flat.slice(i * count, count) for i, f in enumerate(floats)}
    return [
        typed[f] if f in typed else typed_column(f, columns[f], inputs.types.get(f))
        for f in inputs.features
    ]


def typed_column(name: str, values, datatype: str | None) -> pa.Array:
    """A feature's values as the batches would hand them to the model."""
    try:
        if datatype == "BYTES":
            if isinstance(values, np.ndarray) or any(
                not isinstance(v, str) and v is not None for v in values
            ):
                raise BadRequest(f"feature {name!r} is text (BYTES): got a value that is not")
            return pa.array(values, pa.string()).dictionary_encode()
        array = pa.array(values)
        if datatype is not None and array.type != ARROW_TYPES[datatype]:
            array = array.cast(ARROW_TYPES[datatype])
        elif pa.types.is_string(array.type):
            array = array.dictionary_encode()
        return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        expected = datatype or "one type"
        raise BadRequest(
            f"feature {name!r} must be {expected}: {describe(values)} cannot be read as such"
        ) from None


def describe(values) -> str:
    for value in values:
        if value is not None and not isinstance(value, int | float | np.number):
            return f"{value!r}"
    return "a value"
