"""Fake of ComfyUI's folder_paths: a models dir set by the test, and the folder registry."""

import os

output_directory = os.environ.get("FAKE_COMFY_OUTPUT_DIR", "/nonexistent/output")

models_dir = os.environ.get("FAKE_COMFY_MODELS_DIR", "/nonexistent/models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _ = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def get_output_directory() -> str:
    return output_directory


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """As ComfyUI: (folder, file name, next counter, subfolder, prefix); refuses folders outside output_dir."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")  # noqa: TRY002 - ComfyUI's folder_paths raises this plain Exception
    os.makedirs(folder, exist_ok=True)
    counters = []
    for name in os.listdir(folder):
        head, _, tail = name.partition(filename + "_")
        if head == "" and tail[:5].isdigit():
            counters.append(int(tail[:5]))
    return folder, filename, max(counters, default=0) + 1, subfolder, filename_prefix
