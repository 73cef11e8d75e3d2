/* mpi_hello.c - MPI "hello" for the shoal Slurm test bed.
 * Build: mpicc -O2 -o mpi_hello mpi_hello.c
 * Run:   salloc -N2 srun --overlap -N2 -n4 --mpi=pmix ./mpi_hello
 * Prints one line per rank: "hello from rank R of N on HOST".
 * The ranks also do one MPI_Allreduce, so a run that prints N lines has
 * really exchanged messages between nodes, not just started N processes. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int rank, size, len, sum = 0;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (sum != size * (size - 1) / 2) {
        fprintf(stderr, "rank %d: allreduce gave %d, expected %d\n", rank, sum, size * (size - 1) / 2);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    printf("hello from rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
