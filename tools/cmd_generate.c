/* tools/cmd_generate: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xlkv generate: not built yet\n");
    return 1;
}
