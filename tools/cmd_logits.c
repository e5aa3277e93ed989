/* tools/cmd_logits: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_logits(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xlkv logits: not built yet\n");
    return 1;
}
