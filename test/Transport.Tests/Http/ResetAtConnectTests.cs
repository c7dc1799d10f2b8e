using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

/// <summary>
/// Clients that reset right after connecting: every connection the transport accepts goes to the server,
/// so Kestrel's metrics and connection logs count it. (Kestrel's Sockets transport drops those whose
/// socket it can no longer set up; under Wine that is most of them, on Linux none.)
/// </summary>
public sealed class ResetAtConnectTests
{
    private const int Clients = 50;

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task Every_accepted_connection_reaches_the_server_even_one_reset_at_once(TransportKind transport)
    {
        var handled = 0;
        await using var server = await ConnectionServer.StartAsync(transport, context =>
        {
            Interlocked.Increment(ref handled);
            return Task.CompletedTask;
        });

        for (var i = 0; i < Clients; i++)
        {
            RawClient.Reset(await RawClient.ConnectAsync(server.EndPoint));
        }

        if (server.Counters is { } counters)
        {
            // Some never get past the kernel or AcceptEx (under Wine, AcceptEx fails for a reset client,
            // sometimes for all of them); each one the transport accepted reached the server.
            await Task.Delay(500, TestContext.Current.CancellationToken);
            Assert.True(await Eventually.TrueAsync(() => Volatile.Read(ref handled) == counters.ConnectionsAccepted, TimeSpan.FromSeconds(5)), $"handled {handled}; {Eventually.Describe(counters)}");
            if (!OperatingSystem.IsWindows())
            {
                // Linux accepts every one of them.
                Assert.True(await Eventually.TrueAsync(() => Volatile.Read(ref handled) == Clients, TimeSpan.FromSeconds(5)), $"handled {handled}; {Eventually.Describe(counters)}");
            }
        }
        else
        {
            // Kestrel's own transport, for comparison only.
            await Task.Delay(500, TestContext.Current.CancellationToken);
        }

        TestContext.Current.SendDiagnosticMessage($"{transport}: {Volatile.Read(ref handled)} of {Clients} reset-at-connect clients reached the server");
    }
}
