namespace Transport.Tests.Infrastructure;

/// <summary>
/// Tests that count the whole process's open sockets: they run alone, after the parallel tests, so no
/// other test's sockets come and go under the count.
/// </summary>
[CollectionDefinition(nameof(ProcessWideTests), DisableParallelization = true)]
public sealed class ProcessWideTests;
