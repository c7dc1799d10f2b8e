using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Transport.Benchmarks.Shared;
using Transport.Winsock;

namespace TransportBench;

/// <summary>
/// Builds a transport the way Kestrel gets it: the services of a host with <c>UseKestrel()</c>, plus our
/// transport or not, so both share Kestrel's registrations (memory pool factory, logging, options).
/// </summary>
internal sealed class Transports : IAsyncDisposable
{
    private readonly IHost _host;

    private Transports(IHost host, IConnectionListenerFactory factory)
    {
        _host = host;
        Factory = factory;
    }

    public IConnectionListenerFactory Factory { get; }

    /// <summary>Winsock counters when the winsock transport is registered; otherwise null.</summary>
    public WinsockTransportCounters? WinsockCounters => _host.Services.GetService<WinsockTransportCounters>();

    /// <param name="transport">winsock (ours) or sockets (Kestrel's).</param>
    /// <param name="endpoint">Where Kestrel would bind.</param>
    /// <param name="engine">Ours only: the I/O engine (WinsockTransportOptions.Engine).</param>
    /// <param name="inline">Ours only: UnsafePreferInlineScheduling.</param>
    public static Transports Create(string transport, EndPoint endpoint, WinsockEngine engine = WinsockEngine.Auto, bool inline = false)
    {
        var (host, factory) = KestrelTransportHost.Create(transport == "winsock", endpoint, options =>
        {
            options.Engine = engine;
            options.UnsafePreferInlineScheduling = inline;
        });
        var pools = host.Services.GetService<IMemoryPoolFactory<byte>>();
        Console.Error.WriteLine($"factory: {factory.GetType().FullName}");
        Console.Error.WriteLine($"memory pool factory: {pools?.GetType().FullName ?? "(none registered)"}");
        return new Transports(host, factory);
    }

    public ValueTask DisposeAsync() => KestrelTransportHost.DisposeAsync(_host);
}
