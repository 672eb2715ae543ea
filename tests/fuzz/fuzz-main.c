/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Corpus replay for the fuzz targets as ordinary check programs (gcc, no libFuzzer): runs
 * LLVMFuzzerTestOneInput on every file of tests/fuzz/corpus/FUZZ_NAME (or of the files and
 * directories given as arguments) and prints TAP. A crash or a sanitizer report fails the test. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

#include "fuzz.h"

static unsigned n_run;

static int run_file(const char *path) {
        FILE *f = fopen(path, "re");
        uint8_t *buf = NULL;
        size_t size = 0, alloc = 0;

        if (!f) {
                printf("not ok %u - %s: %s\n", ++n_run, path, strerror(errno));
                return -1;
        }
        for (;;) {
                if (alloc - size < 65536) {
                        alloc = alloc ? alloc * 2 : 65536;
                        buf = realloc(buf, alloc);
                        if (!buf)
                                abort();
                }
                size_t n = fread(buf + size, 1, alloc - size, f);
                size += n;
                if (n == 0)
                        break;
        }
        fclose(f);
        /* an exact-size copy, so ASan sees reads past the end */
        uint8_t *exact = malloc(size ? size : 1);
        if (!exact)
                abort();
        memcpy(exact, buf, size);
        free(buf);
        (void) LLVMFuzzerTestOneInput(exact, size);
        free(exact);
        printf("ok %u - %s\n", ++n_run, path);
        fflush(stdout);
        return 0;
}

static int compare(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int run_path(const char *path) {
        struct stat st;
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        DIR *d;
        int r = 0;

        if (stat(path, &st) < 0) {
                printf("not ok %u - %s: %s\n", ++n_run, path, strerror(errno));
                return -1;
        }
        if (!S_ISDIR(st.st_mode))
                return run_file(path);
        d = opendir(path);
        if (!d)
                return -1;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                names = realloc(names, (n + 1) * sizeof(char *));
                if (!names || asprintf(&names[n], "%s/%s", path, de->d_name) < 0)
                        abort();
                n++;
        }
        closedir(d);
        qsort(names, n, sizeof(char *), compare);
        for (size_t i = 0; i < n; i++) {
                if (run_file(names[i]) < 0)
                        r = -1;
                free(names[i]);
        }
        free(names);
        return r;
}

int main(int argc, char *argv[]) {
        char *dflt = NULL;
        int r = 0;

        if (argc < 2) {
                const char *top = getenv("top_srcdir");
                if (asprintf(&dflt, "%s/tests/fuzz/corpus/%s", top ?: FUZZ_TOP_SRCDIR, FUZZ_NAME) < 0)
                        return 1;
                r = run_path(dflt);
                free(dflt);
        } else
                for (int i = 1; i < argc; i++)
                        if (run_path(argv[i]) < 0)
                                r = -1;
        printf("1..%u\n", n_run);
        return r < 0 || n_run == 0 ? 1 : 0;
}
