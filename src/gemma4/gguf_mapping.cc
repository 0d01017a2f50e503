#include "gquant/gemma4/gguf_mapping.h"
