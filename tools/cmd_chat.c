/* tools/cmd_chat: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_chat(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xlkv chat: not built yet\n");
    return 1;
}
