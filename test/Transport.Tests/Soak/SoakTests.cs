using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using KestrelApp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Soak;

/// <summary>
/// The soak: over 100,000 requests of real traffic to the sample app, on real Kestrel on 127.0.0.1. Behind
/// <see cref="SoakSwitch"/>; it counts the process's sockets, so it runs alone.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class SoakTests
{
    // Each cycle opens 5,000 keep-alive connections in waves of 1,000, holds them all open at once and
    // sends one more request on each, then drops them in waves (the last wave with an RST), while
    // Connection: close requests run alongside: 6 x 8,500 = 51,000 of them in all.
    private const int Cycles = 6;
    private const int WavesPerCycle = 5;
    private const int ConnectionsPerWave = 1_000;
    private const int KeepAlivePeak = WavesPerCycle * ConnectionsPerWave;
    private const int ClosingRequestsPerCycle = 8_500;
    private const int ClosingWorkers = 8;
    private const int ConnectParallelism = 250;

    // Heap after a full GC with no client connected, compared cycle by cycle: the last third of the
    // cycles may not rise above the first half's highest by more than this. A leak of 1 KB per connection
    // adds about 40 MB between the two (3 cycles of 5,000 keep-alive and 8,500 closing connections).
    private const long HeapGrowthBound = 16L * 1024 * 1024;

    private static readonly TimeSpan Budget = TimeSpan.FromMinutes(4);
    private static readonly TimeSpan PerOperation = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(30);

    [Fact(Skip = SoakSwitch.Off, SkipUnless = nameof(SoakSwitch.CanRun), SkipType = typeof(SoakSwitch))]
    public async Task Waves_of_keep_alive_and_connection_close_traffic_fail_nothing_leak_no_sockets_and_memory_levels_off()
    {
        var elapsed = Stopwatch.StartNew();
        var testToken = TestContext.Current.CancellationToken;
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(testToken);
        budget.CancelAfter(Budget);
        var ct = budget.Token;

        var fileLimit = OpenFileLimit();
        Assert.True(
            fileLimit >= 2 * KeepAlivePeak + 2_000,
            $"the open-file limit is {fileLimit}: {KeepAlivePeak} connections with both ends in this process need {2 * KeepAlivePeak} descriptors and more");

        var baseline = ProcessSockets.Count();
        var heapBefore = LiveHeapAfterFullGc();
        var failures = new Failures();
        var troughs = new List<long>();
        var peaks = new List<long>();
        var idleSockets = new List<int>();
        var peakSockets = new List<int>();
        long closeRequests = 0, keepAliveRequests = 0, keepAliveConnections = 0;
        var keepAlivePeak = 0;
        var socketsAfter = -1;
        var counters = "";
        var outcome = "failed";
        var open = new List<KeepAliveConnection>(KeepAlivePeak);
        Task<long>? closing = null;
        HttpClient? client = null;
        var server = await SampleServer.StartAsync();
        try
        {
            var pendingAccepts = server.App.Services.GetRequiredService<IOptions<WinsockTransportOptions>>().Value.PendingAccepts;
            var endPoint = new IPEndPoint(IPAddress.Loopback, server.Port);
            client = server.CreateClosingClient();
            client.Timeout = PerOperation;

            for (var cycle = 0; cycle < Cycles; cycle++)
            {
                closing = RunClosingTrafficAsync(client, ClosingRequestsPerCycle, failures, ct);

                for (var wave = 0; wave < WavesPerCycle; wave++)
                {
                    var opened = await OpenWaveAsync(endPoint, ConnectionsPerWave, failures, ct);
                    open.AddRange(opened);
                    keepAliveConnections += opened.Count;
                    keepAliveRequests += opened.Count;
                }

                // The peak: every connection open at once, its server side too, and each still answers.
                keepAlivePeak = Math.Max(keepAlivePeak, open.Count);
                Assert.True(open.Count == KeepAlivePeak, $"cycle {cycle}: {open.Count} keep-alive connections open, not {KeepAlivePeak}; {failures}");
                var atPeak = ProcessSockets.Count();
                peakSockets.Add(atPeak);
                Assert.True(
                    atPeak >= baseline + 2 * KeepAlivePeak,
                    $"cycle {cycle}: {atPeak} sockets open with {KeepAlivePeak} connections (both ends in this process), baseline {baseline}");
                keepAliveRequests += await RequestOnEachAsync(open, failures, ct);
                peaks.Add(LiveHeapAfterFullGc());

                for (var wave = 0; wave < WavesPerCycle; wave++)
                {
                    var reset = wave == WavesPerCycle - 1;
                    foreach (var connection in open.GetRange(open.Count - ConnectionsPerWave, ConnectionsPerWave))
                    {
                        connection.Drop(reset);
                    }

                    open.RemoveRange(open.Count - ConnectionsPerWave, ConnectionsPerWave);
                    await Task.Delay(100, ct);
                }

                closeRequests += await closing;
                closing = null;

                // No client left: the server holds its listener, its posted accepts, its pooled sockets and
                // those in a reuse disconnect, and nothing else.
                var counted = server.Counters;
                var settled = await Eventually.TrueAsync(
                    () => ProcessSockets.Count() <= baseline + 1 + pendingAccepts + counted.PooledSockets + counted.PendingDisconnects,
                    Settle);
                var idle = ProcessSockets.Count();
                idleSockets.Add(idle);
                Assert.True(
                    settled,
                    $"cycle {cycle}: {idle} sockets open with no client, more than baseline {baseline} + listener 1 + posted accepts {pendingAccepts} " +
                    $"+ pooled and disconnecting; {Eventually.Describe(counted)}");
                troughs.Add(LiveHeapAfterFullGc());
            }

            counters = Eventually.Describe(server.Counters);
            Assert.True(
                server.Counters.ConnectionsAccepted >= closeRequests + keepAliveConnections,
                $"the server accepted {server.Counters.ConnectionsAccepted} connections, the clients made {closeRequests + keepAliveConnections}");
            outcome = "ran";
        }
        catch (OperationCanceledException) when (budget.IsCancellationRequested && !testToken.IsCancellationRequested)
        {
            outcome = "overran its budget";
            Assert.Fail($"the soak overran its budget of {Budget.TotalMinutes} minutes: {closeRequests} closing requests and {troughs.Count} cycles done; {failures}");
        }
        finally
        {
            await budget.CancelAsync();
            if (closing is not null)
            {
                await closing.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            }

            foreach (var connection in open)
            {
                connection.Dispose();
            }

            client?.Dispose();
            await server.DisposeAsync();
            socketsAfter = await ProcessSockets.WaitForAtMostAsync(baseline, Settle);

            var figures = string.Create(
                CultureInfo.InvariantCulture,
                $"soak ({outcome}): {closeRequests + keepAliveRequests} requests ({closeRequests} Connection: close, {keepAliveRequests} keep-alive on " +
                $"{keepAliveConnections} connections), {failures.Count} failed; keep-alive peak {keepAlivePeak} open at once; " +
                $"sockets before {baseline}, at each peak [{string.Join(", ", peakSockets)}], idle after each cycle [{string.Join(", ", idleSockets)}], " +
                $"after {socketsAfter}; managed heap MiB before {Mib(heapBefore)}, after each cycle [{string.Join(", ", troughs.Select(Mib))}], " +
                $"at each peak [{string.Join(", ", peaks.Select(Mib))}]; peak working set {Mib(Process.GetCurrentProcess().PeakWorkingSet64)} MiB; " +
                $"open-file limit {fileLimit}, tcp_tw_reuse {TimeWaitReuse()}; elapsed {elapsed.Elapsed.TotalSeconds:F1} s; {counters}");
            TestContext.Current.SendDiagnosticMessage(figures);
            if (SoakSwitch.ReportPath is { } path)
            {
                await File.WriteAllTextAsync(path, figures + Environment.NewLine, CancellationToken.None);
            }
        }

        Assert.True(failures.Count == 0, failures.ToString());
        Assert.True(socketsAfter <= baseline, $"{socketsAfter} sockets open after the server stopped, {baseline} before it started");

        var firstHalf = troughs.Take(Cycles / 2).Max();
        var lastThird = troughs.Skip(Cycles - Cycles / 3).Max();
        Assert.True(
            lastThird <= firstHalf + HeapGrowthBound,
            $"the heap kept growing: {Mib(lastThird)} MiB in the last cycles against {Mib(firstHalf)} MiB in the first half");
        var firstHalfPeak = peaks.Take(Cycles / 2).Max();
        var lastThirdPeak = peaks.Skip(Cycles - Cycles / 3).Max();
        Assert.True(
            lastThirdPeak <= firstHalfPeak + HeapGrowthBound,
            $"the heap at the keep-alive peak kept growing: {Mib(lastThirdPeak)} MiB in the last cycles against {Mib(firstHalfPeak)} MiB in the first half");
    }

    /// <summary>Opens <paramref name="count"/> keep-alive connections, each with one request answered; returns those that worked.</summary>
    private static async Task<List<KeepAliveConnection>> OpenWaveAsync(IPEndPoint endPoint, int count, Failures failures, CancellationToken ct)
    {
        var opened = new ConcurrentBag<KeepAliveConnection>();
        await Parallel.ForEachAsync(
            Enumerable.Range(0, count),
            new ParallelOptions { MaxDegreeOfParallelism = ConnectParallelism, CancellationToken = ct },
            async (_, token) =>
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(token);
                timeout.CancelAfter(PerOperation);
                KeepAliveConnection? connection = null;
                try
                {
                    connection = await KeepAliveConnection.OpenAsync(endPoint, timeout.Token);
                    await connection.RequestAsync(timeout.Token);
                    opened.Add(connection);
                    connection = null;
                }
                catch (Exception ex) when (!token.IsCancellationRequested)
                {
                    failures.Add("keep-alive connection", ex);
                }
                finally
                {
                    connection?.Dispose();
                }
            });
        return [.. opened];
    }

    /// <summary>One more request on every open connection; returns how many were answered.</summary>
    private static async Task<long> RequestOnEachAsync(List<KeepAliveConnection> connections, Failures failures, CancellationToken ct)
    {
        long answered = 0;
        await Parallel.ForEachAsync(
            connections,
            new ParallelOptions { MaxDegreeOfParallelism = ConnectParallelism, CancellationToken = ct },
            async (connection, token) =>
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(token);
                timeout.CancelAfter(PerOperation);
                try
                {
                    await connection.RequestAsync(timeout.Token);
                    Interlocked.Increment(ref answered);
                }
                catch (Exception ex) when (!token.IsCancellationRequested)
                {
                    failures.Add("keep-alive request at the peak", ex);
                }
            });
        return answered;
    }

    /// <summary>Connection: close requests from several workers, each response checked; returns how many succeeded.</summary>
    private static async Task<long> RunClosingTrafficAsync(HttpClient client, int requests, Failures failures, CancellationToken ct)
    {
        var issued = 0;
        long succeeded = 0;
        var workers = new Task[ClosingWorkers];
        for (var i = 0; i < workers.Length; i++)
        {
            workers[i] = Task.Run(
                async () =>
                {
                    while (Interlocked.Increment(ref issued) <= requests)
                    {
                        try
                        {
                            using var response = await client.GetAsync("/plaintext", ct);
                            var body = await response.Content.ReadAsByteArrayAsync(ct);
                            if (response.StatusCode != HttpStatusCode.OK || response.Headers.ConnectionClose != true || !body.AsSpan().SequenceEqual(SampleHost.PlaintextBody))
                            {
                                failures.Add("Connection: close request", new InvalidDataException(
                                    $"{(int)response.StatusCode}, Connection: close {response.Headers.ConnectionClose}, {body.Length} bytes"));
                                continue;
                            }

                            Interlocked.Increment(ref succeeded);
                        }
                        catch (Exception ex) when (!ct.IsCancellationRequested)
                        {
                            // HttpClient.Timeout (the per-request bound) ends up here too.
                            failures.Add("Connection: close request", ex);
                        }
                    }
                },
                ct);
        }

        await Task.WhenAll(workers);
        return succeeded;
    }

    /// <summary>
    /// Live managed bytes after a full, compacting, blocking GC: every generation's size after it less its
    /// free space. Not GC.GetTotalMemory, which can under-count gen0 under the regions GC, even below zero
    /// (dotnet/runtime#106712).
    /// </summary>
    private static long LiveHeapAfterFullGc()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        var info = GC.GetGCMemoryInfo(GCKind.FullBlocking);
        long live = 0;
        foreach (var generation in info.GenerationInfo)
        {
            live += generation.SizeAfterBytes - generation.FragmentationAfterBytes;
        }

        return live;
    }

    internal static long OpenFileLimit()
    {
        var line = File.ReadLines("/proc/self/limits").Single(l => l.StartsWith("Max open files", StringComparison.Ordinal));
        var soft = line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0];
        return soft == "unlimited" ? long.MaxValue : long.Parse(soft, CultureInfo.InvariantCulture);
    }

    // Dropped keep-alive connections leave their client ports in TIME_WAIT faster than the ephemeral range
    // turns over; Linux reuses them for loopback connects when this is 1 or 2 (2, loopback only, is the default).
    private static string TimeWaitReuse()
        => File.Exists("/proc/sys/net/ipv4/tcp_tw_reuse") ? File.ReadAllText("/proc/sys/net/ipv4/tcp_tw_reuse").Trim() : "unknown";

    private static string Mib(long bytes) => (bytes / (1024.0 * 1024)).ToString("F1", CultureInfo.InvariantCulture);

    /// <summary>Failed requests: counted, and the first few kept for the message.</summary>
    private sealed class Failures
    {
        private readonly ConcurrentQueue<string> _first = new();
        private int _count;

        public int Count => Volatile.Read(ref _count);

        public void Add(string what, Exception ex)
        {
            if (Interlocked.Increment(ref _count) <= 10)
            {
                _first.Enqueue($"{what}: {ex.GetType().Name}: {ex.Message}");
            }
        }

        public override string ToString()
            => Count == 0 ? "no failed requests" : $"{Count} failed requests, the first: {string.Join(" | ", _first)}";
    }
}
