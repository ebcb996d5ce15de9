"""`python -m models_serving.llama_main ARGS`: llama_cpp.server with weight repacking turned off.

llama.cpp's extra CPU buffer types (runtime weight repacking, AMX tiles) crash the process with a
segmentation fault on the first token on some virtualised CPUs that advertise AMX (seen on this
project's CI machines with llama-cpp-python 0.3.36). The embedded model is tiny, so the repacked
kernels buy nothing worth that risk: every model this server loads gets `use_extra_bufts = False`.
The rest of the command line is llama_cpp.server's own.
"""

import llama_cpp.llama_cpp as native


def _without_extra_buffers():
    original = native.llama_model_default_params

    def params():
        model_params = original()
        model_params.use_extra_bufts = False
        return model_params

    return params


def main() -> None:
    native.llama_model_default_params = _without_extra_buffers()
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
