/* tools/commands: the xlkv subcommands, one file each (tools/cmd_<name>.c). Each takes argc/argv after the
 * subcommand name (argv[0] is the subcommand), prints, and returns a process exit status. */
#ifndef XLKV_TOOLS_COMMANDS_H
#define XLKV_TOOLS_COMMANDS_H

int cmd_layers(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_search(int argc, char **argv);

#endif
