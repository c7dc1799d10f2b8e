using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Engines;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// A ring thread runs the transport's own code and nothing else: Kestrel's accept loop, its continuation
/// after a connection's dispose, metric listeners, loggers and the descriptor count (a walk of the
/// process's descriptors on older kernels) all run elsewhere, so that none of them can hold up every
/// connection on the ring. Each test records the thread where such code ran; a ring thread is named
/// "io_uring ...".
/// </summary>
public sealed class RingThreadBoundaryTests
{
    private const string NoRing = "io_uring cannot run in this process (not Linux, or its probe failed).";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    private static bool OnRing => Thread.CurrentThread.Name?.StartsWith("io_uring", StringComparison.Ordinal) == true || EngineThread.IsCurrent;

    [Fact(Skip = NoRing, SkipUnless = nameof(IoUringRuns))]
    public async Task The_servers_accept_and_its_continuation_after_dispose_resume_off_the_ring()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var services = Listener.ListenerTests.BuildServices(options => options.Engine = WinsockEngine.IoUring);
        await using var listener = await Listener.ListenerTests.BindAsync(services);
        var endPoint = (IPEndPoint)listener.EndPoint;
        var onRing = new ConcurrentQueue<string>();
        for (var i = 0; i < 20; i++)
        {
            // The accept is waiting when the client connects; each await below resumes where the awaited
            // operation completed (no synchronization context), which is what the server's code sees.
            var accept = AcceptAndRecordAsync(listener, i, onRing);
            using var client = await RawClient.ConnectAsync(endPoint);
            var connection = await accept.WaitAsync(Timeout, ct);

            // Our FIN goes out; the dispose then waits for the client's FIN, which a ring receives.
            await connection.Transport.Output.CompleteAsync();
            await connection.Transport.Input.CompleteAsync();
            var dispose = DisposeAndRecordAsync(connection, i, onRing);
            Assert.Empty(await RawClient.ReadToFinAsync(client, Timeout));
            client.Shutdown(SocketShutdown.Send);
            await dispose.WaitAsync(Timeout, ct);
        }

        Assert.True(onRing.IsEmpty, string.Join("; ", onRing));
    }

    private static async Task<ConnectionContext> AcceptAndRecordAsync(IConnectionListener listener, int i, ConcurrentQueue<string> onRing)
    {
        var connection = await listener.AcceptAsync(TestContext.Current.CancellationToken).ConfigureAwait(false);
        if (OnRing)
        {
            onRing.Enqueue($"accept {i} on {Thread.CurrentThread.Name}");
        }

        return connection ?? throw new InvalidOperationException("the listener was unbound");
    }

    private static async Task DisposeAndRecordAsync(ConnectionContext connection, int i, ConcurrentQueue<string> onRing)
    {
        await connection.DisposeAsync().ConfigureAwait(false);
        if (OnRing)
        {
            onRing.Enqueue($"dispose {i} on {Thread.CurrentThread.Name}");
        }
    }

    [Fact(Skip = NoRing, SkipUnless = nameof(IoUringRuns))]
    public async Task Kestrels_metric_listeners_never_run_on_a_ring_thread()
    {
        var measured = new ConcurrentQueue<(string Instrument, bool OnRing, string? Thread)>();
        int? port = null;
        using var meters = new MeterListener
        {
            InstrumentPublished = static (instrument, listener) =>
            {
                if (instrument.Meter.Name == "Microsoft.AspNetCore.Server.Kestrel")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            },
        };
        meters.SetMeasurementEventCallback<long>((instrument, _, tags, _) =>
        {
            // Only this test's server: other tests may run Kestrel inline on their rings, as they ask.
            foreach (var tag in tags)
            {
                if (tag.Key == "server.port" && tag.Value is int p && p == port)
                {
                    measured.Enqueue((instrument.Name, OnRing, Thread.CurrentThread.Name));
                }
            }
        });
        meters.Start();

        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            static async context => await context.Transport.Output.WriteAsync("hello"u8.ToArray()),
            options => options.Engine = WinsockEngine.IoUring);
        port = server.EndPoint.Port;
        for (var i = 0; i < 30; i++)
        {
            using var client = await RawClient.ConnectAsync(server.EndPoint);
            Assert.Equal("hello"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
        }

        Assert.True(await Eventually.TrueAsync(() => measured.Count(m => m.Instrument == "kestrel.queued_connections") >= 60, Timeout),
            $"{measured.Count} measurements");
        var ring = measured.Where(m => m.OnRing).Select(m => $"{m.Instrument} on {m.Thread}").Distinct().ToList();
        Assert.True(ring.Count == 0, string.Join("; ", ring));
    }

    [Fact(Skip = NoRing, SkipUnless = nameof(IoUringRuns))]
    public async Task What_the_transport_logs_on_a_ring_reaches_the_logger_on_another_thread()
    {
        var log = new ThreadRecordingLog();
        await using (var server = await SampleServer.StartAsync(
            configure: options => options.Engine = WinsockEngine.IoUring,
            configureBuilder: builder => builder.Logging.AddProvider(log).AddFilter<ThreadRecordingLog>("Transport.Winsock", LogLevel.Trace)))
        {
            await server.GetPlaintextOnNewConnectionsAsync(20);
            await RawHttp.GetPlaintextAsync(new IPEndPoint(IPAddress.Loopback, server.Port), 5, clientClosesFirst: false);
            Assert.True(await Eventually.TrueAsync(() => server.Counters.GracefulCloses >= 25, Timeout), Eventually.Describe(server.Counters));
        }

        // The per-connection Debug entries (FIN received, FIN sent) are written where the ring completes.
        Assert.Contains(log.Entries, e => e.EventName is "ConnectionReadFin" or "ConnectionWriteFin");
        var ring = log.Entries.Where(e => e.OnRing).Select(e => $"{e.EventName} on {e.Thread}").Distinct().ToList();
        Assert.True(ring.Count == 0, string.Join("; ", ring));
    }

    /// <summary>
    /// The reserve's descriptor count (on kernels before 6.2 a walk of /proc/self/fd, which at 18,000
    /// connections took over 100 ms) runs on a timer of its own, whatever thread accepts.
    /// </summary>
    [Fact(Skip = NoRing, SkipUnless = nameof(IoUringRuns))]
    public async Task The_descriptor_reserves_count_never_runs_on_a_ring_thread()
    {
        var counts = new ConcurrentQueue<(bool OnRing, string? Thread)>();
        DescriptorReserve.Counted = _ => counts.Enqueue((OnRing, Thread.CurrentThread.Name));
        try
        {
            await using var server = await SampleServer.StartAsync(configure: options =>
            {
                options.Engine = WinsockEngine.IoUring;
                options.DescriptorReserve = 128;
            });
            // Accepts over more than a second: the count is a second old at some of them.
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(2.5);
            var served = 0;
            while (DateTime.UtcNow < until)
            {
                await server.GetPlaintextOnNewConnectionsAsync(10);
                served += 10;
            }

            Assert.True(server.Counters.ConnectionsAccepted >= served);
        }
        finally
        {
            DescriptorReserve.Counted = null;
        }

        Assert.True(counts.Count >= 2, $"{counts.Count} counts in 2.5 s");
        var ring = counts.Where(c => c.OnRing).Select(c => c.Thread).Distinct().ToList();
        Assert.True(ring.Count == 0, $"counted on {string.Join(", ", ring)}");
    }

    /// <summary>A logger provider that records where each of the transport's entries was written.</summary>
    private sealed class ThreadRecordingLog : ILoggerProvider
    {
        private readonly ConcurrentQueue<Entry> _entries = new();

        public IReadOnlyCollection<Entry> Entries => _entries;

        public ILogger CreateLogger(string categoryName) => new Logger(categoryName == "Transport.Winsock" ? _entries : null);

        public void Dispose()
        {
        }

        public sealed record Entry(string? EventName, bool OnRing, string? Thread);

        private sealed class Logger(ConcurrentQueue<Entry>? entries) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => entries is not null;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
                => entries?.Enqueue(new Entry(eventId.Name, OnRing, Thread.CurrentThread.Name));
        }
    }
}
