using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// The io_uring engine's measurement variants (<see cref="IoUringVariants"/>: registered-file slots, and the
/// FIN as IORING_OP_SHUTDOWN) keep the engine's semantics: every response whole and then a FIN under
/// concurrent churn (the shutdown runs on an io-wq worker, and a close that did not wait for it let the
/// worker shut down the next connection given the same descriptor number), an abort an RST, the right
/// endpoints, no descriptor left open. The defaults are tested by the rest of the suite.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class IoUringVariantTests
{
    private static readonly byte[] Payload = Encoding.ASCII.GetBytes(new string('v', 3000));

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    public static TheoryData<string> Variants => new() { "registered", "ring-fin" };

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or the probe failed).", SkipUnless = nameof(IoUringRuns))]
    [MemberData(nameof(Variants))]
    public async Task Concurrent_churn_gets_every_payload_whole_then_a_fin_and_leaves_no_socket_open(string variant)
    {
        var before = ProcessSockets.Count();
        using (Use(variant))
        {
            var rings = new System.Collections.Concurrent.ConcurrentDictionary<RingThread, bool>();
            await using var server = await StartAsync(async context =>
            {
                rings.TryAdd(((IoUringConnectionIo)((Transport.Winsock.Connections.WinsockConnection)context).Io).Ring, true);
                var result = await context.Transport.Input.ReadAtLeastAsync(1);
                context.Transport.Input.AdvanceTo(result.Buffer.End);
                await context.Transport.Output.WriteAsync(Payload);
            });
            AssertVariantRuns(server, variant);

            var clients = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
            {
                var buffer = new byte[Payload.Length];
                for (var i = 0; i < 60; i++)
                {
                    using var socket = await RawClient.ConnectAsync(server.EndPoint);
                    await RawClient.SendAsync(socket, "x");
                    if (i % 2 == 0)
                    {
                        // To the server's FIN: the payload, then the end of the stream.
                        Assert.Equal(Payload, await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
                        continue;
                    }

                    // The payload alone, then a close at once, as wrk does: the server's close can come while its
                    // FIN is still queued, and a FIN that then reached the next socket given the descriptor
                    // would cut that connection's payload short.
                    var read = 0;
                    while (read < buffer.Length)
                    {
                        var n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, TestContext.Current.CancellationToken);
                        Assert.True(n > 0, $"the stream ended after {read} of {buffer.Length} bytes");
                        read += n;
                    }

                    Assert.Equal(Payload, buffer);
                }
            }));
            await Task.WhenAll(clients);
            Assert.True(
                await Eventually.TrueAsync(() => server.Counters!.GracefulCloses == 960, TimeSpan.FromSeconds(10)),
                Eventually.Describe(server.Counters!));
            Assert.Equal(0, server.Counters!.ConnectionResets);
            // A registered connection's descriptor is a slot of its ring's table, which /proc does not show:
            // every slot taken is given back. (Plain ones are counted below.)
            Assert.True(
                await Eventually.TrueAsync(() => rings.Keys.All(static ring => ring.OpenSlots == 0), TimeSpan.FromSeconds(10)),
                $"slots still open: {string.Join(", ", rings.Keys.Select(static ring => ring.OpenSlots))}");
        }

        var after = await ProcessSockets.WaitForAtMostAsync(before, TimeSpan.FromSeconds(5));
        Assert.True(after <= before, $"{after} sockets open after the server, {before} before: {ProcessSockets.Describe()}");
    }

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or the probe failed).", SkipUnless = nameof(IoUringRuns))]
    [MemberData(nameof(Variants))]
    public async Task An_abort_reaches_the_peer_as_a_reset(string variant)
    {
        using (Use(variant))
        {
            await using var server = await StartAsync(static async context =>
            {
                var result = await context.Transport.Input.ReadAtLeastAsync(1);
                context.Transport.Input.AdvanceTo(result.Buffer.End);
                context.Abort(new ConnectionAbortedException("the test aborts"));
            });
            AssertVariantRuns(server, variant);

            for (var i = 0; i < 3; i++)
            {
                using var socket = await RawClient.ConnectAsync(server.EndPoint);
                await RawClient.SendAsync(socket, "x");
                var ex = await Assert.ThrowsAsync<SocketException>(() => RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
                Assert.Equal(SocketError.ConnectionReset, ex.SocketErrorCode);
            }
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or the probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task Registered_connections_hold_no_process_descriptor_and_know_both_endpoints()
    {
        using (Use("registered"))
        {
            await using var server = await StartAsync(static async context =>
            {
                var result = await context.Transport.Input.ReadAtLeastAsync(1);
                context.Transport.Input.AdvanceTo(result.Buffer.End);
                await context.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes($"{context.LocalEndPoint} {context.RemoteEndPoint}"));
                // Held open until the client leaves, so that every connection is open at once.
                while (!(await context.Transport.Input.ReadAsync()).IsCompleted)
                {
                }
            });
            AssertVariantRuns(server, "registered");

            var port = server.EndPoint.Port;
            var before = ProcessSockets.CountOnPort(port);
            var sockets = new List<Socket>();
            try
            {
                for (var i = 0; i < 20; i++)
                {
                    var socket = await RawClient.ConnectAsync(server.EndPoint);
                    sockets.Add(socket);
                    await RawClient.SendAsync(socket, "x");
                    var buffer = new byte[256];
                    var read = await socket.ReceiveAsync(buffer, SocketFlags.None, TestContext.Current.CancellationToken);
                    Assert.Equal($"{socket.RemoteEndPoint} {socket.LocalEndPoint}", Encoding.ASCII.GetString(buffer, 0, read));
                }

                // The 20 client sockets are this process's descriptors; the server's 20 are slots of the ring's
                // table, not descriptors (plain ones would add 20 sockets whose local port is the server's).
                // Counted by port, so that other tests' sockets opened or closed meanwhile do not count.
                var held = ProcessSockets.CountOnPort(port);
                Assert.Equal(before.Remote + 20, held.Remote);
                Assert.Equal(before.Local, held.Local);
            }
            finally
            {
                foreach (var socket in sockets)
                {
                    socket.Dispose();
                }
            }

            Assert.True(
                await Eventually.TrueAsync(() => server.Counters!.GracefulCloses == 20, TimeSpan.FromSeconds(10)),
                Eventually.Describe(server.Counters!));
        }
    }

    private static Task<ConnectionServer> StartAsync(Func<ConnectionContext, Task> handler)
        => ConnectionServer.StartAsync(TransportKind.Winsock, handler, static options => options.Engine = WinsockEngine.IoUring);

    private static void AssertVariantRuns(ConnectionServer server, string variant)
    {
        var status = server.Counters!.EngineStatus;
        if (status.Contains("this kernel lacks what they need", StringComparison.Ordinal))
        {
            // Before 6.8 (no IORING_OP_FIXED_FD_INSTALL, standing for 6.7's uring_cmd setsockopt), or a file
            // table the kernel refused: the engine takes plain descriptors, and says so.
            Assert.Skip($"registered files cannot run on this kernel: {status}");
        }

        Assert.Contains(variant == "registered" ? "; variant: registered files (" : "; variant: FIN by IORING_OP_SHUTDOWN", status, StringComparison.Ordinal);
        TestContext.Current.SendDiagnosticMessage($"{variant}: {status}");
    }

    /// <summary>Turns a variant on for the servers started meanwhile; what was set before comes back on dispose.</summary>
    private static Restore Use(string variant)
    {
        var restore = new Restore(IoUringVariants.RegisteredFiles, IoUringVariants.RingFin);
        IoUringVariants.RegisteredFiles = variant == "registered";
        IoUringVariants.RingFin = true;
        return restore;
    }

    private sealed class Restore(bool registeredFiles, bool ringFin) : IDisposable
    {
        public void Dispose()
        {
            IoUringVariants.RegisteredFiles = registeredFiles;
            IoUringVariants.RingFin = ringFin;
        }
    }
}
