using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// A completion the kernel dropped (since 5.19, when it cannot allocate an overflow entry; it then answers
/// EBADR once from io_uring_enter) is not the ring's death: counted, logged once, the ring and every other
/// connection go on, and only a connection whose completion was really lost ends. The drop is a seam
/// (<see cref="RingThread.EnterFault"/> answering EBADR; <see cref="RingThread.DropFault"/> discarding a
/// completion as the kernel would), as no kernel here runs out of memory for an overflow entry on demand.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class RingDropTests
{
    private const int EBADR = 74;

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task An_EBADR_from_the_kernel_is_counted_and_the_ring_and_its_connections_go_on()
    {
        var log = new CapturedLog();
        var rings = new System.Collections.Concurrent.ConcurrentDictionary<RingThread, bool>();
        await using var server = await StartEchoServerAsync(log, rings);
        using var kept = await RawClient.ConnectAsync(server.EndPoint);
        await EchoAsync(kept, "before");

        var once = 1;
        RingThread.EnterFault = () => Interlocked.Exchange(ref once, 0) == 1 ? EBADR : 0;
        try
        {
            // The ring meets it at its next enter: the one this exchange wakes it for.
            await EchoAsync(kept, "during");
            Assert.True(await Eventually.TrueAsync(() => Volatile.Read(ref once) == 0, TimeSpan.FromSeconds(5)));
        }
        finally
        {
            RingThread.EnterFault = null;
        }

        // The connection that was open throughout is still served (its receive was canceled by the resync
        // and posted again), and so are new ones.
        await EchoAsync(kept, "after");
        for (var i = 0; i < 20; i++)
        {
            using var fresh = await RawClient.ConnectAsync(server.EndPoint);
            await EchoAsync(fresh, $"new {i}");
        }

        var ring = Assert.Single(rings.Keys);
        Assert.Equal(1, ring.DroppedCompletions);
        // The kept connection's receive, the accepts and the wake-up read were asked about, and none was lost.
        Assert.True(ring.ResyncCancels >= 3, $"{ring.ResyncCancels} operations asked about");
        Assert.Equal(0, ring.LostOperations);
        Assert.False(ring.IsStopping);
        Assert.DoesNotContain(log.Entries, e => e.EventId.Name == "RingThreadFailed");
        var dropped = Assert.Single(log.Entries, e => e.EventId.Name == "RingCompletionsDropped");
        Assert.Equal(LogLevel.Warning, dropped.Level);
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task A_receive_whose_completion_was_dropped_ends_its_connection_at_once_and_the_others_go_on()
    {
        var log = new CapturedLog();
        var rings = new System.Collections.Concurrent.ConcurrentDictionary<RingThread, bool>();
        await using var server = await StartEchoServerAsync(log, rings);
        using var other = await RawClient.ConnectAsync(server.EndPoint);
        await EchoAsync(other, "other");
        using var victim = await RawClient.ConnectAsync(server.EndPoint);
        await EchoAsync(victim, "victim");

        // The kernel drops the completion of the receive that takes these 7 bytes (a poll's result is its mask).
        var once = 1;
        RingThread.DropFault = (operation, result) => operation is ReceiveOperation && result == 7 && Interlocked.Exchange(ref once, 0) == 1;
        try
        {
            await victim.SendAsync("dropped"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
            // Its bytes are gone with the completion: the connection ends now, not at some timeout.
            // (A hang would end in the read's timeout, an OperationCanceledException, failing the test.)
            try
            {
                var echoed = await RawClient.ReadToFinAsync(victim, TimeSpan.FromSeconds(10));
                Assert.Empty(echoed);
                TestContext.Current.SendDiagnosticMessage("the victim's connection ended with a FIN");
            }
            catch (SocketException ex)
            {
                TestContext.Current.SendDiagnosticMessage($"the victim's connection ended with {ex.SocketErrorCode}");
            }
        }
        finally
        {
            RingThread.DropFault = null;
        }

        Assert.Equal(0, Volatile.Read(ref once));
        var ring = Assert.Single(rings.Keys);
        Assert.Equal(1, ring.DroppedCompletions);
        Assert.Equal(1, ring.LostOperations);
        // The other connection, and new ones, are served.
        await EchoAsync(other, "still");
        using var fresh = await RawClient.ConnectAsync(server.EndPoint);
        await EchoAsync(fresh, "fresh");
        Assert.DoesNotContain(log.Entries, e => e.EventId.Name == "RingThreadFailed");
    }

    private static Task<ConnectionServer> StartEchoServerAsync(CapturedLog log, System.Collections.Concurrent.ConcurrentDictionary<RingThread, bool> rings)
        => ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context =>
            {
                rings.TryAdd(((IoUringConnectionIo)((WinsockConnection)context).Io).Ring, true);
                await EchoUntilFinAsync(context);
            },
            static options =>
            {
                options.Engine = WinsockEngine.IoUring;
                // One ring, so that the one drop is every connection's.
                options.IoUringThreadCount = 1;
            },
            builder => builder.Logging.AddProvider(log).AddFilter<CapturedLog>("Transport.Winsock", LogLevel.Trace));

    private static async Task EchoUntilFinAsync(ConnectionContext context)
    {
        while (true)
        {
            var result = await context.Transport.Input.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                await context.Transport.Output.WriteAsync(segment);
            }

            context.Transport.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    }

    private static async Task EchoAsync(Socket socket, string text)
    {
        var sent = Encoding.ASCII.GetBytes(text);
        await socket.SendAsync(sent, SocketFlags.None, TestContext.Current.CancellationToken);
        var received = new byte[sent.Length];
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        var read = 0;
        while (read < received.Length)
        {
            var n = await socket.ReceiveAsync(received.AsMemory(read), SocketFlags.None, timeout.Token);
            Assert.True(n > 0, $"the server ended the connection after {read} bytes of \"{text}\"");
            read += n;
        }

        Assert.Equal(text, Encoding.ASCII.GetString(received));
    }
}
