"""Export of a MultiGrain model for inference: torch.export (.pt2) or ONNX (.onnx), dynamic batch, height, width;
or its weights and config for sharing (.safetensors).

    python export.py --checkpoint whitened.pth --output multigrain.pt2
    python export.py --checkpoint whitened.pth --output multigrain.onnx   # needs onnx and onnxscript
    python export.py --checkpoint whitened.pth --output multigrain.safetensors   # needs safetensors

The exported program takes a normalised (N, 3, H, W) float32 batch (multigrain.eval_transform) and returns
(logits, descriptors), as MultiGrainNet does: the trunk, GeM with the checkpoint's p, its whitening and its
classifier. N, H and W are free, from 1 (a thin image of 1 x 400 px included). The safetensors file holds the
weights and a small JSON config (architecture, class names, input size s*: multigrain.storage.safetensors_file), no
pickle; load_model and every script read it back. Before the file is written, its outputs are compared with the
model's on batches of other sizes and aspect ratios, thin ones among them (ONNX: when onnxruntime is installed;
safetensors: the model read back from the file); a file that fails one is not written.
"""

import importlib.util
import io
import os

import torch
import torch.fx.experimental._config

import flags
import utils
from multigrain.storage.atomic_write import atomic_path, write_atomic
from multigrain.storage.checkpoint import code_version
from multigrain.storage.model_files import model_settings, open_model
from multigrain.storage.safetensors_file import save_safetensors

FORMATS = {".pt2": "torch.export", ".onnx": "ONNX", ".safetensors": "safetensors"}
# The optional packages each format needs, and the extra that installs them.
FORMAT_PACKAGES = {".onnx": (("onnx", "onnxscript"), "onnx"), ".safetensors": (("safetensors",), "safetensors")}
# The traced example and the inputs the exported program is checked on: batch, height, width all differ, down to 1.
EXAMPLE_SHAPE = (2, 3, 128, 96)
CHECK_SHAPES = ((1, 3, 96, 128), (3, 3, 80, 64), (1, 3, 32, 400), (2, 3, 400, 32), (1, 3, 1, 57), (1, 3, 57, 1))
INPUT_NAMES, OUTPUT_NAMES = ["images"], ["logits", "descriptors"]


def dynamic_shapes():
    """Batch, height and width of the one input are free."""
    return ({0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)


def sizes_from_one():
    """Tracing assumes that a free size is not 0 or 1, and guards the program against 1: the feature maps of an
    image less than 32 px high or wide (1 x 1 after the trunk's strides) would then be refused, though the eager
    model takes them. Size-oblivious tracing drops that assumption: the program holds for every size from 1."""
    return torch.fx.experimental._config.patch(backed_size_oblivious=True)


def export_program(model) -> torch.export.ExportedProgram:
    with sizes_from_one():
        return torch.export.export(model, (torch.randn(EXAMPLE_SHAPE),), dynamic_shapes=dynamic_shapes())


@sizes_from_one()
def write_onnx(model, path):
    torch.onnx.export(
        model,
        (torch.randn(EXAMPLE_SHAPE),),
        path,
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes(),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        verbose=False,
    )


def onnx_runner(path):
    """The ONNX file run by onnxruntime on the CPU, as a function of an input tensor."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda images: tuple(torch.from_numpy(output) for output in session.run(None, {"images": images.numpy()}))


def check_same_outputs(model, run_exported, what):
    """Compares the exported outputs with the model's on CHECK_SHAPES; a utils.Failure says where they differ, or
    which input the exported model refuses."""
    generator = torch.Generator().manual_seed(0)
    for shape in CHECK_SHAPES:
        images = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = model(images)
        try:
            outputs = run_exported(images)
            for name, output, reference in zip(OUTPUT_NAMES, outputs, expected):
                torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-4, msg=f"{name} differs")
        except Exception as e:  # whatever the runtime raises: the model is not written
            reason = " ".join(str(e).split())[:300]
            raise utils.Failure(
                f"the {what} does not give the model's outputs on an input of shape {shape}: {reason}; nothing written"
            ) from None
        print(f"{what} at {tuple(shape)}: same logits and descriptors as the model")


@utils.usage_check
def check_args(args):
    """Refuses a bad --output or --checkpoint before anything is exported; returns the ModelFile of --checkpoint."""
    extension = os.path.splitext(args.output)[1]
    if extension not in FORMATS:
        *others, last = FORMATS
        raise ValueError(f"--output {args.output} must end with {', '.join(others)} or {last} (the format to write)")
    if extension in FORMAT_PACKAGES:
        packages, extra = FORMAT_PACKAGES[extension]
        missing = [name for name in packages if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(
                f"--output {args.output} needs the packages {', '.join(missing)}: pip install 'multigrain[{extra}]'"
            )
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a folder")
    utils.check_writable_folder(os.path.dirname(os.path.abspath(args.output)), "the folder of --output")
    return open_model(args.checkpoint, model_name=args.model)


def write_safetensors(model, architecture, source, path):
    """The model's weights and config (its class names and input size) in the safetensors file `path`, read back
    by open_model and compared with the model."""
    save_safetensors(
        path, model.state_dict(), architecture=architecture, class_names=model.class_names,
        input_size=model.input_size, source=source, code_version=code_version(),
    )  # fmt: skip
    check_same_outputs(model, open_model(path).model(), "safetensors file read back")


def main(args):
    model_file = check_args(args)
    name, model = model_file.architecture, model_file.model()
    source = {"kind": model_file.kind, "file": os.path.basename(model_file.path)}
    del model_file
    extension = os.path.splitext(args.output)[1]
    if extension == ".pt2":
        program = export_program(model)
        check_same_outputs(model, program.module(), "torch.export program")
        # Saved in memory first: torch.export.save aborts the process when a write to a file fails (a full disk).
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        write_atomic(args.output, lambda f: f.write(buffer.getbuffer()), "exported model")
    elif extension == ".safetensors":
        with atomic_path(args.output, "exported model") as tmp_path:
            write_safetensors(model, name, source, tmp_path)
    else:
        with atomic_path(args.output, "exported model") as tmp_path:
            write_onnx(model, tmp_path)
            if importlib.util.find_spec("onnxruntime") is not None:
                check_same_outputs(model, onnx_runner(tmp_path), "ONNX file (onnxruntime)")
            else:
                print("onnxruntime is not installed: the ONNX file is not checked against the model")
    classes = f"{len(model.class_names)} class names" if model.class_names else "no class names"
    size = f"input size {model.input_size}" if model.input_size else "no input size"
    print(f"{name} ({model_settings(model)}; {classes}, {size}) exported to {args.output}")


def get_args_parser(add_help=True):
    parser = flags.script_parser(
        "MultiGrain: export a model for inference (torch.export, ONNX) or for sharing (safetensors)", add_help
    )
    flags.add_checkpoint(parser, "the model to export")
    parser.add_argument(
        "--output",
        required=True,
        help="file to write: .pt2 (torch.export.save), .onnx (ONNX, dynamo exporter) or .safetensors (weights and "
        "config)",
    )
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
