/* core/file: see file.h. */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/status.h"

xlkv_status xlkv_read_file(const char *path, char **out_data, size_t *out_size) {
    *out_data = NULL;
    if (out_size) *out_size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return xlkv_fail(XLKV_E_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return xlkv_fail(XLKV_E_IO, "%s: cannot seek (not a regular file?)", path);
    }
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return xlkv_fail(XLKV_E_IO, "%s: cannot determine size", path);
    }
    char *data = malloc((size_t)size + 1);
    if (!data) {
        fclose(f);
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %ld bytes", path, size);
    }
    size_t got = fread(data, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) {
        free(data);
        return xlkv_fail(XLKV_E_IO, "%s: short read (%zu of %ld bytes)", path, got, size);
    }
    data[size] = '\0';
    *out_data = data;
    if (out_size) *out_size = (size_t)size;
    return XLKV_OK;
}

xlkv_status xlkv_map_file(const char *path, xlkv_mapped_file *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return xlkv_fail(XLKV_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return xlkv_fail(XLKV_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        static const unsigned char empty[1];
        out->data = empty;
        return XLKV_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return xlkv_fail(XLKV_E_IO, "%s: cannot map: %s", path, strerror(errno));
    out->data = p;
    out->size = (size_t)st.st_size;
    return XLKV_OK;
}

void xlkv_unmap_file(xlkv_mapped_file *file) {
    if (file && file->data && file->size) munmap((void *)file->data, file->size);
    if (file) {
        file->data = NULL;
        file->size = 0;
    }
}

char *xlkv_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t n = a;
    if (a && dir[a - 1] != '/') p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

int xlkv_is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int xlkv_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
