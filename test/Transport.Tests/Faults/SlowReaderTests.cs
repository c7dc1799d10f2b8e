using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Faults;

/// <summary>
/// A client that streams a huge body to /echo and never reads the echo: backpressure has to reach all the
/// way back (response send blocked, so the handler stops reading, so the transport stops receiving, so the
/// client's send blocks) instead of the server buffering the body. In the process-wide collection because
/// it measures the whole process's managed memory, which parallel tests would disturb.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class SlowReaderTests
{
    private const long BodySize = 1L << 30;
    private const long AcceptedBound = 32L << 20;
    private const long MemoryBound = 64L << 20;
    private static readonly TimeSpan StallAfter = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Client_that_never_reads_the_echo_is_held_by_backpressure_without_the_body_being_buffered()
    {
        await using var server = await StartAsync();
        using var normal = server.CreateKeepAliveClient();
        normal.Timeout = TimeSpan.FromSeconds(10);
        await AssertServedAsync(normal);
        var memoryBefore = ManagedHeapBytes();

        await using var slow = await StallAsync(server);
        var memoryAtStall = ManagedHeapBytes();
        TestContext.Current.SendDiagnosticMessage(
            $"slow reader: {slow.Sent / 1024.0 / 1024:F1} MiB sent before the stall; managed heap {memoryBefore} -> {memoryAtStall} bytes; {Eventually.Describe(server.Counters)}");
        // Far less than the body was accepted anywhere on the way (socket buffers, transport, Kestrel)...
        Assert.True(slow.Sent < AcceptedBound, $"{slow.Sent} of {BodySize} body bytes were accepted before the stall");
        // ...and the server holds on to no copy of it.
        Assert.True(memoryAtStall - memoryBefore < MemoryBound, $"the managed heap grew by {memoryAtStall - memoryBefore} bytes");

        // Meanwhile everyone else is served as usual.
        await AssertServedAsync(normal);
        using (var fresh = server.CreateClosingClient())
        {
            await AssertServedAsync(fresh);
        }

        // Reset the slow client; the server keeps serving.
        await slow.ResetAsync();
        await AssertServedAsync(normal);
        Assert.True(await Eventually.TrueAsync(() => server.Counters.PendingDisconnects == 0, TimeSpan.FromSeconds(10)), Eventually.Describe(server.Counters));
    }

    [NotUnderWineFact(WinePlatform.ResetMissedByBlockedSend)]
    public async Task Reset_of_a_client_held_by_backpressure_ends_its_connection_and_the_counters_settle()
    {
        await using var server = await StartAsync();
        var counters = server.Counters;
        await using (var slow = await StallAsync(server))
        {
            await slow.ResetAsync();
        }

        // The server's blocked send fails with the reset: the connection ends and nothing is left pending.
        Assert.True(
            await Eventually.TrueAsync(() => counters.ConnectionResets + counters.AbortiveCloses >= 1 && counters.PendingDisconnects == 0, TimeSpan.FromSeconds(15)),
            Eventually.Describe(counters));
        using var client = server.CreateClosingClient();
        await AssertServedAsync(client);
        TestContext.Current.SendDiagnosticMessage($"slow reader after reset: {Eventually.Describe(counters)}");
    }

    private static Task<SampleServer> StartAsync()
        // Kestrel's own limits would end this client first (the body is over MaxRequestBodySize, the echo
        // is read slower than MinResponseDataRate): off, so what holds the body back is backpressure alone.
        // A bounded shutdown, in case a connection is still stuck when the host stops.
        => SampleServer.StartAsync(configureBuilder: builder =>
        {
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Limits.MaxRequestBodySize = null;
                k.Limits.MinResponseDataRate = null;
                k.Limits.MinRequestBodyDataRate = null;
            });
        });

    /// <summary>Starts the slow client and returns once its send has made no progress for a while (bounded), having checked it is stalled, not failed.</summary>
    private static async Task<SlowClient> StallAsync(SampleServer server)
    {
        var ct = TestContext.Current.CancellationToken;
        var slow = new SlowClient(await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port)));
        await RawClient.SendAsync(slow.Socket, $"POST /echo HTTP/1.1\r\nHost: slow\r\nContent-Type: application/octet-stream\r\nContent-Length: {BodySize}\r\n\r\n");
        slow.Start();

        var clock = Stopwatch.StartNew();
        var lastProgress = TimeSpan.Zero;
        var lastSent = 0L;
        while (clock.Elapsed - lastProgress < StallAfter && clock.Elapsed < Bounded && lastSent <= AcceptedBound && !slow.Sending.IsCompleted)
        {
            await Task.Delay(100, ct);
            if (slow.Sent != lastSent)
            {
                (lastSent, lastProgress) = (slow.Sent, clock.Elapsed);
            }
        }

        // Stalled, not failed: the send is still pending on a live connection...
        Assert.False(slow.Sending.IsCompleted, $"the send ended: {slow.Sending.Exception?.GetBaseException().Message ?? "the whole body went through"}");
        Assert.True(clock.Elapsed - lastProgress >= StallAfter, $"still progressing after {clock.Elapsed.TotalSeconds:F1} s, {lastSent} bytes sent");
        // ...held by the echo the client does not read: the handler took part of the body and answered 200.
        Assert.True(lastSent >= 1 << 20, $"only {lastSent} bytes were taken before the stall");
        Assert.True(slow.Socket.Available > 0, "no echoed bytes are waiting at the client");
        var head = new byte[12];
        Assert.Equal(head.Length, slow.Socket.Receive(head, SocketFlags.Peek));
        Assert.Equal("HTTP/1.1 200", Encoding.ASCII.GetString(head));
        Assert.Equal(0, server.Counters.AbortiveCloses);
        return slow;
    }

    /// <summary>The managed heap after full collections: what the process holds on to, pinned buffers included.</summary>
    private static long ManagedHeapBytes()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return GC.GetGCMemoryInfo(GCKind.Any).HeapSizeBytes;
    }

    private static async Task AssertServedAsync(HttpClient client)
    {
        var ct = TestContext.Current.CancellationToken;
        Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", ct));
        var payload = Encoding.ASCII.GetBytes("served while another client is stuck");
        using var content = new ByteArrayContent(payload);
        using var response = await client.PostAsync("/echo", content, ct);
        Assert.Equal(payload, await response.Content.ReadAsByteArrayAsync(ct));
    }

    /// <summary>Streams the body from one reused chunk, counting what the socket took; never reads.</summary>
    private sealed class SlowClient(Socket socket) : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        private long _sent;

        public Socket Socket => socket;

        public long Sent => Interlocked.Read(ref _sent);

        public Task Sending { get; private set; } = Task.CompletedTask;

        public void Start() => Sending = Task.Run(async () =>
        {
            var chunk = new byte[64 * 1024];
            while (Sent < BodySize)
            {
                Interlocked.Add(ref _sent, await socket.SendAsync(chunk, SocketFlags.None, _stop.Token));
            }
        });

        /// <summary>An RST to the server; the pending send ends (bounded) with the socket.</summary>
        public async Task ResetAsync()
        {
            RawClient.Reset(socket);
            await _stop.CancelAsync();
            await Assert.ThrowsAnyAsync<Exception>(() => Sending.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            socket.Dispose();
            _stop.Dispose();
        }
    }
}
