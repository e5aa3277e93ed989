/* tools/cmd_layers: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_layers(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xlkv layers: not built yet\n");
    return 1;
}
